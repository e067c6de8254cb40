"""AMQP_PASSWORD: any password reaches the broker as it is, through the URL the process connects with."""

from urllib.parse import unquote, urlsplit

import pytest
from yarl import URL

from plumbing.settings import ProcessSettings, amqp_url_with_password

AWKWARD = "p@ss/w:rd%41?#&+ é"


def test_a_password_with_url_characters_parses_back_unchanged() -> None:
    url = amqp_url_with_password("amqp://orderflow@rabbit.example:5671/orderflow", AWKWARD)
    parts = urlsplit(url)
    assert (parts.username, unquote(parts.password or "")) == ("orderflow", AWKWARD)
    assert (parts.hostname, parts.port, parts.path) == ("rabbit.example", 5671, "/orderflow")
    # aio-pika hands the URL to aiormq through yarl: what it reads is what the broker gets.
    parsed = URL(url)
    assert (parsed.user, parsed.password, parsed.host, parsed.port) == ("orderflow", AWKWARD, "rabbit.example", 5671)


def test_the_setting_replaces_a_password_already_in_the_url() -> None:
    settings = ProcessSettings(amqp_url="amqp://orderflow:old@127.0.0.1:5672/", amqp_password=AWKWARD)
    assert URL(settings.amqp_url).password == AWKWARD
    assert AWKWARD not in repr(settings)


def test_the_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://orderflow@broker:5672/%2F")
    monkeypatch.setenv("AMQP_PASSWORD", "a:b@c/d%")
    assert URL(ProcessSettings().amqp_url).password == "a:b@c/d%"


def test_without_the_setting_the_url_is_used_as_given() -> None:
    assert ProcessSettings(amqp_url="amqp://u:p@h:5672/v").amqp_url == "amqp://u:p@h:5672/v"


def test_a_url_without_user_is_refused() -> None:
    with pytest.raises(ValueError, match="names no user"):
        amqp_url_with_password("amqp://broker:5672/", "secret")
