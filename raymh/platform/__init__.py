"""What raymh runs on: joining or starting Ray (`cluster`), where a run's records live (`records`), the MLflow
store (`tracking`). Below the method: train/, infer/ and run/ import it; it imports only config and console."""
