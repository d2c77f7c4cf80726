"""What a model is: its configuration and its checkpoint (safetensors or GGUF), read lazily."""
