"""Using a trained model: loading (`loading`), label maps (`segmenter`), `raymh predict` on Ray Data
(`predict`, `formats`), ONNX and torch.export files (`export`), the MLflow pyfunc (`mlflow_model`,
`pyfunc_model`) and a Ray Serve app (`serve`). Heavy imports happen inside the functions."""
