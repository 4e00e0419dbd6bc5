"""The pure core: template model, validation, build plan and HCL rendering. No I/O here
except reading the packaged Jinja2 templates."""
