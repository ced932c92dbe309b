"""Server-rendered pages: the chat page."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from .models import ModelKind
from .selectors import models_for_caller, registry_load, user_info_load


@login_required
def chat_page(request):
    """The chat page; everything after the first paint goes over /ws/chat/."""
    user = user_info_load(request.user.pk)
    models = models_for_caller(registry_load(), user, None) if user else []
    # Embedding, image and completion models cannot hold a conversation.
    models = [m for m in models if m.kind == ModelKind.CHAT]
    default = (
        next((link.model_id for link in user.links if link.is_default), None) if user else None
    )
    context = {
        "models": [{"id": m.id, "name": m.display_name, "public": m.name} for m in models],
        "default_model": default,
    }
    return render(request, "chat/chat.html", context)
