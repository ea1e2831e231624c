"""DATABASE_URL parsing (example_project.dburl), as the example and the suite use it."""

import pytest
from example_project.dburl import parse


def test_a_tcp_url():
    assert parse("postgres://ann:s%40cret@DB.example.com:5433/app?sslmode=require") == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "app",
        "USER": "ann",
        "PASSWORD": "s@cret",
        "HOST": "db.example.com",
        "PORT": "5433",
        "OPTIONS": {"sslmode": "require"},
    }


@pytest.mark.parametrize(
    "url",
    [
        "postgres://postgres@%2FSrv%2FData%2F.pgdata:5433/app",
        "postgresql://postgres@/app?host=/Srv/Data/.pgdata&port=5433",
        "postgres://postgres@/app?host=%2FSrv%2FData%2F.pgdata&port=5433",
    ],
)
def test_a_socket_folder_keeps_its_case(url):
    # The embedded server listens on a socket in its data folder, whose path may have capitals.
    settings = parse(url)
    assert (settings["HOST"], settings["PORT"], settings["NAME"]) == (
        "/Srv/Data/.pgdata",
        "5433",
        "app",
    )
    assert settings["OPTIONS"] == {}


def test_only_postgresql():
    with pytest.raises(ValueError, match="django_relay needs PostgreSQL"):
        parse("mysql://localhost/app")
