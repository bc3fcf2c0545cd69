# Issue 18: client credentials, GitHub App installation tokens and the JWT bearer grant.
# Additive only: three columns with database defaults (raw inserts keep working).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("broker_app", "0012_audit_environment"),
    ]

    operations = [
        migrations.AddField(
            model_name="provider",
            name="private_key_enc",
            field=models.TextField(blank=True, db_default="", default="", editable=False),
        ),
        migrations.AddField(
            model_name="connection",
            name="grant_secret_enc",
            field=models.TextField(blank=True, db_default="", default=""),
        ),
        migrations.AddField(
            model_name="connection",
            name="grant_params",
            field=models.JSONField(blank=True, db_default={}, default=dict),
        ),
    ]
