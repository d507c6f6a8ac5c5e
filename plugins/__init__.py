"""Built-in plugins: encoders, projectors, LLMs and tasks, each registered through the hook specs."""
