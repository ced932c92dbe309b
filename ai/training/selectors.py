"""Reads of training rows on a user's behalf: the tenancy checks live here, once.

A dataset or job is visible to staff, to members of its organisation, and to its
creator when it has no organisation. Changing one (upload, delete, start, cancel)
needs staff or the trainer role's permission, and (for non-staff) the organisation's
membership or, for an organisation-less row, being its creator.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from orgs.models import Membership
from panel.errors import NotFound

from ..models import Dataset

# --- Datasets ---------------------------------------------------------------------------


def datasets_for_user(user) -> QuerySet[Dataset]:
    """The datasets ``user`` may see, newest first, without their content."""
    datasets = Dataset.objects.defer("content").select_related("organisation", "created_by")
    if user.is_staff:
        return datasets
    member_of = Membership.objects.filter(user=user).values("organisation_id")
    return datasets.filter(
        Q(organisation_id__in=member_of) | Q(organisation__isnull=True, created_by=user)
    )


def dataset_get_for_user(user, public_id: str, *, with_content: bool = False) -> Dataset:
    """The dataset with this id if ``user`` may see it; 404 otherwise (outsiders learn nothing)."""
    datasets = datasets_for_user(user)
    if with_content:
        datasets = datasets.defer(None).select_related("organisation", "created_by")
    dataset = datasets.filter(public_id=public_id).first()
    if dataset is None:
        raise NotFound(f"No such file: '{public_id}'.", param="file_id")
    return dataset


def dataset_find_for_user(user, ref: str) -> Dataset | None:
    """A visible dataset by id, else the newest visible one with that name (seed 004's
    ``"dataset": "my-training-data"``); None when there is none."""
    datasets = datasets_for_user(user)
    return datasets.filter(public_id=ref).first() or datasets.filter(name=ref).first()


def dataset_may_upload_any(user) -> bool:
    """Whether ``user`` holds a role that uploads datasets (staff, or the trainer role)."""
    return user.is_staff or user.has_perm("ai.add_dataset")


def dataset_may_upload(user, organisation) -> bool:
    """Whether ``user`` may store a dataset owned by ``organisation`` (None: by themselves)."""
    if user.is_staff:
        return True
    if not dataset_may_upload_any(user):
        return False
    return organisation is None or _is_member(user, organisation.pk)


def dataset_may_change(user, dataset: Dataset) -> bool:
    """Whether ``user`` (who can see it) may delete ``dataset``."""
    if user.is_staff:
        return True
    if not user.has_perm("ai.delete_dataset"):
        return False
    if dataset.organisation_id is None:
        return dataset.created_by_id == user.pk
    return _is_member(user, dataset.organisation_id)


def _is_member(user, organisation_id: int) -> bool:
    return Membership.objects.filter(user=user, organisation_id=organisation_id).exists()
