"""Every feature's models, collected here so that each history's metadata is complete.

Features declare models on `service.db.base.Base` (control plane) or `TenantBase` (tenant
databases); this is the one place that knows them all, for the migration environments and
for the tests that compare the histories with the models. A new feature adds its models here.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from service.articles import models as articles_models
from service.db.base import Base, TenantBase
from service.identity import models as identity_models

CONTROL_PLANE_MODELS = (identity_models,)
TENANT_MODELS = (articles_models,)
CONTROL_PLANE_METADATA: MetaData = Base.metadata
TENANT_METADATA: MetaData = TenantBase.metadata
