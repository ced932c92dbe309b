"""Registry services: writes that touch several rows of the model registry."""

from django.db import transaction

from ..models import AIModel, ModelKind, ModelLink, Upstream

DEMO_MODEL = "demo-chat"


@transaction.atomic
def demo_seed(*, upstream_base_url: str, user) -> AIModel:
    """Create or refresh the demo chat model served by the fake upstream, linked to ``user``."""
    model, _ = AIModel.objects.update_or_create(
        name=DEMO_MODEL,
        defaults={
            "display_name": "Demo chat (fake upstream)",
            "kind": ModelKind.CHAT,
            "tags": ["demo"],
            "config": {
                "context_window": 8192,
                "max_output_tokens": 512,
                "default_temperature": 0.7,
            },
            "is_active": True,
        },
    )
    Upstream.objects.update_or_create(
        model=model,
        name="fake-upstream",
        defaults={"base_url": upstream_base_url, "provider_model_id": "fake-chat"},
    )
    has_default = ModelLink.objects.filter(user=user, is_default=True).exclude(model=model).exists()
    ModelLink.objects.update_or_create(
        model=model, user=user, defaults={"is_enabled": True, "is_default": not has_default}
    )
    return model


@transaction.atomic
def model_deploy(*, upstreams: list[dict], **fields) -> AIModel:
    """Register a model with the upstreams that serve it (seed 004's deploy), all or nothing."""
    model = AIModel(**fields)
    model.full_clean()
    model.save()
    for upstream_fields in upstreams:
        upstream = Upstream(model=model, **upstream_fields)
        upstream.full_clean()
        upstream.save()
    return model
