"""Results for people and deployments: Markdown tables (`markdown`), the HTML report
(`report`, `frontier`), `kdray export`'s files (`write`) and ONNX students (`onnx`)."""
