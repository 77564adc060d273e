"""Running the method: the driver of one run (`fit`), joining placed sites, interrupts, `raymh runs`,
`raymh eval`. Imports train/, infer/, data/ and platform/; tune/, evidence/ and the CLI import it."""
