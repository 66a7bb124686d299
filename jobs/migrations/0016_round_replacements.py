from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0014_job_counters"),
    ]

    operations = [
        migrations.AddField(
            model_name="round",
            name="replacements",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
