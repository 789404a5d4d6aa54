"""fedmq's application layer: the CLI, the demo, tasks, the local broker, benchmarks."""
