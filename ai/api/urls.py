from django.urls import path

from . import openai, panel, responses, usage

# The same views under every OpenAI base URL the seeds use; each proxy at its OpenAI path.
openai_patterns = [
    *(path(view.route.path, view) for view in openai.PROXY_VIEWS),
    path("responses", responses.responses_create),
    path("responses/<str:response_id>", responses.response_detail),
    path("responses/<str:response_id>/input_items", responses.response_input_items),
    path("models", openai.models_list),
    path("models/<path:model_name>", openai.model_detail),
]

# botserver (seed 004): chat, embeddings and `inference` as an alias of chat.
botserver_patterns = [
    path("chat/completions", openai.chat_completions),
    path("inference", openai.chat_completions),
    path("embeddings", openai.embeddings),
]

panel_patterns = [
    path("chat", panel.chat),
    path("studio", panel.studio),
    path("models", panel.models),
    path("my-models", panel.my_models),
    path("usage", usage.usage),
]
