"""Job.claim_token: a per-claim number from a sequence that fences an attempt's writes."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_relay", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="claim_token",
            field=models.BigIntegerField(
                blank=True, editable=False, null=True, verbose_name="claim token"
            ),
        ),
        migrations.RunSQL(
            "CREATE SEQUENCE django_relay_job_claim_token_seq "
            "OWNED BY django_relay_job.claim_token",
            "DROP SEQUENCE django_relay_job_claim_token_seq",
        ),
    ]
