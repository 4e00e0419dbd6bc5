"""AIB's REST API on-prem (`orchestrate serve`): a second front door to the same service."""
