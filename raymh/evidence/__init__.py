"""The method's evidence: `raymh reproduce` runs its comparison tables (a Tune grid of cells x seeds under
one MLflow parent run) and `raymh report` rebuilds the tables and figures from MLflow alone."""
