"""MongoDB for tenant documents: clients, outages as 503s (the SQL side is `service.db`)."""
