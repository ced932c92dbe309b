from django.urls import path

from . import anthropic, fine_tuning, openai, panel, responses, training, usage

# Anthropic's Messages API; the SDK appends /v1/messages to its base URL.
anthropic_patterns = [
    path("messages", anthropic.messages),
    path("messages/count_tokens", anthropic.count_tokens),
]

# The same views under every OpenAI base URL the seeds use; each proxy at its OpenAI path.
openai_patterns = [
    *(path(view.route.path, view) for view in openai.PROXY_VIEWS),
    path("responses", responses.responses_create),
    path("responses/<str:response_id>", responses.response_detail),
    path("responses/<str:response_id>/input_items", responses.response_input_items),
    path("models", openai.models_list),
    path("models/<path:model_name>", openai.model_detail),
    path("fine_tuning/jobs", fine_tuning.jobs),
    path("fine_tuning/jobs/<str:job_id>", fine_tuning.job_detail),
    path("fine_tuning/jobs/<str:job_id>/cancel", fine_tuning.job_cancel),
    path("fine_tuning/jobs/<str:job_id>/events", fine_tuning.job_events),
    *anthropic_patterns,
]

# botserver (seed 004): chat, embeddings and `inference`, chat that also takes `input`.
botserver_patterns = [
    path("chat/completions", openai.chat_completions),
    path("inference", openai.inference),
    path("embeddings", openai.embeddings),
    # Training jobs (seed 004).
    path("training", training.training_list),
    path("training/start", training.training_start),
    path("training/<str:job_id>/status", training.training_status),
    path("training/<str:job_id>/cancel", training.training_cancel),
]

panel_patterns = [
    path("chat", panel.chat),
    path("studio", panel.studio),
    path("models", panel.models),
    path("my-models", panel.my_models),
    path("usage", usage.usage),
]
