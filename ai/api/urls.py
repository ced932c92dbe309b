from django.urls import path

from . import anthropic, datasets, fine_tuning, openai, panel, responses, training, usage

# Anthropic's Messages and Models APIs; the SDK appends /v1/messages to its base URL.
anthropic_patterns = [
    path("messages", anthropic.messages),
    path("messages/count_tokens", anthropic.count_tokens),
    # Anthropic's shape for the Anthropic SDK (its anthropic-version header), else OpenAI's.
    path("models", anthropic.versioned(openai.models_list, anthropic.models_list)),
    path(
        "models/<path:model_name>", anthropic.versioned(openai.model_detail, anthropic.model_detail)
    ),
]

# The same views under every OpenAI base URL the seeds use; each proxy at its OpenAI path.
openai_patterns = [
    *(path(view.route.path, view) for view in openai.PROXY_VIEWS),
    path("responses", responses.responses_create),
    path("responses/<str:response_id>", responses.response_detail),
    path("responses/<str:response_id>/input_items", responses.response_input_items),
    path("files", datasets.FileListView.as_view()),
    path("files/<str:file_id>", datasets.FileDetailView.as_view()),
    path("files/<str:file_id>/content", datasets.FileContentView.as_view()),
    path("fine_tuning/jobs", fine_tuning.jobs),
    path("fine_tuning/jobs/<str:job_id>", fine_tuning.job_detail),
    path("fine_tuning/jobs/<str:job_id>/cancel", fine_tuning.job_cancel),
    path("fine_tuning/jobs/<str:job_id>/events", fine_tuning.job_events),
    *anthropic_patterns,
]

# Training datasets under /api/v1/ai/ (the management API's prefix).
dataset_patterns = [
    path("datasets", datasets.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<str:public_id>", datasets.DatasetDetailView.as_view(), name="dataset-detail"),
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
