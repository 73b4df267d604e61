"""Articles: tenant data, stored in each tenant's own database."""
