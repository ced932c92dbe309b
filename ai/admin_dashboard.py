"""The admin's dashboards: the home page's last 24 h and the usage page (/admin/usage/).

Interfaces only: parse the filters, call a selector of ai.selectors.dashboard, render.
"""

from __future__ import annotations

import csv
from datetime import UTC
from io import StringIO

from django import forms
from django.contrib import admin
from django.http import HttpResponse
from django.template.response import TemplateResponse

from .models import RollupPeriod
from .selectors.dashboard import (
    DIMENSIONS,
    PERIODS,
    TIMINGS,
    Bucket,
    Ranked,
    UsageReport,
    usage_report,
)

DEFAULT_PERIOD = "7d"
MAX_ID = 2**63 - 1  # the largest id a BigAutoField (and SQLite) holds
# Spreadsheets run a cell starting with these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_HEADER = [
    "bucket_start",
    "model_id",
    "model",
    "requests",
    "errors",
    "error_rate_percent",
    *TIMINGS,
    "tokens",
    "cost",
]


class UsageFilters(forms.Form):
    period = forms.ChoiceField(
        choices=[("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days")],
        required=False,
    )
    view = forms.ChoiceField(
        choices=[
            ("", "Auto (hourly for 24 h)"),
            (RollupPeriod.HOUR, "Hourly"),
            (RollupPeriod.DAY, "Daily"),
        ],
        required=False,
    )
    user = forms.IntegerField(label="User id", min_value=1, max_value=MAX_ID, required=False)
    organisation = forms.IntegerField(
        label="Organisation id", min_value=1, max_value=MAX_ID, required=False
    )
    api_key = forms.IntegerField(label="Key id", min_value=1, max_value=MAX_ID, required=False)
    model = forms.IntegerField(label="Model id", min_value=1, max_value=MAX_ID, required=False)
    format = forms.ChoiceField(choices=[("html", "Page"), ("csv", "CSV")], required=False)

    def choice(self) -> dict:
        """The valid filters (an invalid one is left out), with the defaults filled in."""
        data = self.cleaned_data
        period = data.get("period") or DEFAULT_PERIOD
        view = data.get("view") or (RollupPeriod.HOUR if period == "24h" else RollupPeriod.DAY)
        filters = {name: data[name] for name in DIMENSIONS if data.get(name)}
        return {"period": period, "view": view, "filters": filters}


def usage_dashboard(request):
    """Charts, tops and a table of the rollups, filtered; ?format=csv for the table as CSV."""
    data = request.GET.copy()
    data.setdefault("period", DEFAULT_PERIOD)
    form = UsageFilters(data)
    valid = form.is_valid()
    report = usage_report(**form.choice())
    if valid and form.cleaned_data.get("format") == "csv":
        return _csv(report)
    context = {
        **admin.site.each_context(request),
        "title": "Usage",
        "form": form,
        "report": report,
        "data": _charts(report),
        "header": CSV_HEADER,
        "table": table_rows(report),
        "periods": PERIODS,
    }
    return TemplateResponse(
        request, "admin/usage_dashboard.html", context, status=200 if valid else 400
    )


def _label(bucket: Bucket, view: str) -> str:
    return bucket.start.strftime("%Y-%m-%d %H:00" if view == RollupPeriod.HOUR else "%Y-%m-%d")


def _charts(report: UsageReport) -> dict:
    """Labels and series for Chart.js, totals and tops for the template (and tests)."""
    buckets = report.buckets
    return {
        "labels": [_label(b, report.view) for b in buckets],
        "requests": [b.requests for b in buckets],
        "errors": [b.errors for b in buckets],
        "error_rate": [b.error_rate for b in buckets],
        "tokens": [b.tokens for b in buckets],
        "cost": [round(float(b.cost), 6) for b in buckets],
        **{name: [b.timings[name] for b in buckets] for name in TIMINGS},
        "totals": {
            "requests": report.totals.requests,
            "errors": report.totals.errors,
            "error_rate": report.totals.error_rate,
            "tokens": report.totals.tokens,
            "cost": round(float(report.totals.cost), 6),
            **report.totals.timings,
        },
        "top_users": [_top_row(top) for top in report.top_users],
        "top_orgs": [_top_row(top) for top in report.top_orgs],
        "top_models": [_top_row(top) for top in report.top_models],
        "top_keys": [_top_row(top) for top in report.top_keys],
    }


def _top_row(top: Ranked) -> dict:
    name = top.name if top.name is not None else f"#{top.id} (deleted)"
    return {"id": top.id, "name": name, "requests": top.requests, "cost": str(top.cost)}


def table_rows(report: UsageReport) -> list[list]:
    """The page's table as the CSV's rows, in the CSV_HEADER's order."""
    rows = []
    for row in report.table:
        usage = row.usage
        start = usage.start.astimezone(UTC).isoformat()
        model = row.model if row.model is not None else f"#{row.model_id} (deleted)"
        timings = [usage.timings[column] for column in TIMINGS]
        rows.append(
            [start, row.model_id, model, usage.requests, usage.errors, usage.error_rate]
            + [*timings, usage.tokens, usage.cost]
        )
    return rows


def csv_cell(value) -> str:
    """A cell's text, made inert for spreadsheets if it could start a formula."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv(report: UsageReport) -> HttpResponse:
    out = StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for row in table_rows(report):
        writer.writerow([csv_cell(value) for value in row])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    filename = f"usage-{report.period}-{report.view}-{report.start:%Y%m%d%H}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
