"""The admin's Datasets page: list, upload (checked as the API checks it), a short preview, delete.

The content is never shown whole: the page shows its first lines, each cut short.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join

from panel.errors import ApiError

from ..models import Dataset
from . import datasets

PREVIEW_LINES = 3
PREVIEW_CHARS = 200


class DatasetUploadForm(forms.ModelForm):
    """A JSONL file checked line by line; its errors are the form's, and nothing is saved."""

    file = forms.FileField(help_text="JSONL in OpenAI's chat fine-tuning format.")
    name = forms.CharField(
        max_length=255, required=False, help_text="Empty: the uploaded file's name."
    )

    class Meta:
        model = Dataset
        fields = ["file", "name", "organisation"]

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("file")
        if upload is None:
            return cleaned
        try:
            datasets.dataset_size_check(upload.size)
            datasets.dataset_content_set(self.instance, upload.read())
        except ApiError as exc:
            self.add_error("file", exc.message)
        cleaned["name"] = cleaned.get("name") or upload.name
        self.instance.name = cleaned["name"]
        return cleaned


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "owner", "lines", "bytes", "created_at"]
    list_filter = ["organisation"]
    search_fields = ["name", "public_id", "created_by__username", "organisation__slug"]
    fields = ["public_id", "name", "owner", "purpose", "lines", "bytes", "sha256"]
    fields += ["created_by", "created_at", "preview"]
    readonly_fields = fields

    def get_queryset(self, request):
        rows = super().get_queryset(request).select_related("organisation", "created_by")
        return rows.defer("content")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = DatasetUploadForm
            kwargs["fields"] = ["file", "name", "organisation"]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["file", "name", "organisation"] if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        # A dataset is checked once, on upload: it is read, or deleted, never edited.
        return False

    def save_model(self, request, obj, form, change):
        obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def delete_model(self, request, obj):
        datasets.dataset_delete(user=request.user, dataset=obj)

    def delete_queryset(self, request, queryset):
        for dataset in queryset:
            datasets.dataset_delete(user=request.user, dataset=dataset)

    @admin.display(description="owner")
    def owner(self, dataset: Dataset) -> str:
        if dataset.organisation is not None:
            return str(dataset.organisation)
        return f"{dataset.created_by} (personal)" if dataset.created_by else "-"

    @admin.display(description=f"first {PREVIEW_LINES} lines")
    def preview(self, dataset: Dataset):
        rows = bytes(dataset.content or b"").split(b"\n", PREVIEW_LINES)[:PREVIEW_LINES]
        cut = [row.decode("utf-8", "replace")[:PREVIEW_CHARS] for row in rows]
        return format_html(
            '<pre style="white-space:pre-wrap">{}</pre>',
            format_html_join(
                "\n", "{}{}", ((c, "…" if len(c) == PREVIEW_CHARS else "") for c in cut)
            ),
        )
