"""The core's own endpoints, registered through the same hooks as any third-party plugin."""
