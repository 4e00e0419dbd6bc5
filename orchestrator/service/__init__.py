"""The service: stored templates, runs and their state machine, admission by host capacity,
recovery of runs whose process died. The CLI (and later the REST API) call these functions;
they decide, the fronts present."""
