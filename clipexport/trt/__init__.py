"""TensorRT engines: recipes, optimization profiles, trtexec commands, the builder and provenance."""
