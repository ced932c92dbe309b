"""Site roles (seed 004): admin is a staff user; the others are Django groups.

The groups and their permissions are created by a data migration
(``accounts/migrations/0004_roles.py``) and assigned to users in the admin.
"""

MODEL_MANAGER = "model_manager"
TRAINER = "trainer"
