"""The phases of one build, each in its own module; orchestrator.engine sequences them."""
