"""``/model-specs``: JSON model specs (docs/methods.md §4), validated; never code, never pickles."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from app.deps import OwnerDep, ReadDep, WriteSessionDep
from app.errors import responses
from app.schemas import ModelSpecCreate, ModelSpecPublic, ModelSpecsPublic
from taskgauge.auth import Principal
from taskgauge.services import datasets as services

router = APIRouter(prefix="/model-specs", tags=["model-specs"])


@router.post(
    "", status_code=201, response_model=ModelSpecPublic, operation_id="model-specs-create", responses=responses()
)
def create_model_spec(body: ModelSpecCreate, session: WriteSessionDep, owner: OwnerDep) -> ModelSpecPublic:
    """Store a validated model spec, e.g. ``{"name": "mlp", "spec": {"arch": "mlp", "hidden": [200, 200]}}``."""
    row = services.create_model_spec(session, owner.owner_id, name=body.name, spec=body.spec)
    return ModelSpecPublic.model_validate(row)


@router.get("", response_model=ModelSpecsPublic, operation_id="model-specs-list", responses=responses())
async def list_model_specs(read: ReadDep) -> ModelSpecsPublic:
    def specs(session: Session, owner: Principal) -> ModelSpecsPublic:
        rows = services.list_model_specs(session, owner.owner_id)
        return ModelSpecsPublic(items=[ModelSpecPublic.model_validate(r) for r in rows], count=len(rows))

    return await read(specs)


@router.get("/{spec_id}", response_model=ModelSpecPublic, operation_id="model-specs-read", responses=responses())
async def read_model_spec(spec_id: str, read: ReadDep) -> ModelSpecPublic:
    return await read(
        lambda s, owner: ModelSpecPublic.model_validate(services.get_model_spec(s, owner.owner_id, spec_id))
    )
