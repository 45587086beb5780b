"""LLM baselines: the OpenAI-compatible client and the local llama.cpp server. Imports the foundation,
emprl.models and emprl.eval."""
