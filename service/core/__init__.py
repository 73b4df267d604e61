"""Cross-cutting code: settings, logging, errors, middleware, pools, metrics, tracing."""
