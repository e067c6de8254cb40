"""Production mode (plumbing/production.py): ORDERFLOW_ENVIRONMENT=production refuses each development default
with one line naming the setting; outside production the defaults stand as they are."""

import pytest
from pydantic import SecretStr
from yarl import URL

from orchestrator.main import OrchestratorSettings
from orderctl.config import SERVICES, CtlSettings
from plumbing import production
from plumbing.production import RefusedInProduction
from plumbing.settings import ProcessSettings, amqp_url_with_ca_file
from services.notify.main import NotifySettings
from services.payment.main import PaymentSettings

pytestmark = pytest.mark.unit

CA = "/etc/orderflow/ca/ca.crt"
GOOD_AMQP = "amqps://orderflow@orderflow-broker:5671/"
GOOD_DB = "postgresql://orderflow_payment@orderflow-db-rw:5432/orderflow_payment?sslmode=verify-full"
#: Settings a production payment process may start with; each test below puts back one development default.
GOOD_PAYMENT = {
    "orderflow_environment": "production",
    "amqp_url": GOOD_AMQP,
    "amqp_ca_file": CA,
    "database_url": GOOD_DB,
    "stripe_api_key": "sk_live_51Hxyz",
    "stripe_api_base": "",
    "stripe_webhook_secret": "whsec_9f8e7d",
}


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGSSLMODE", "ORDERFLOW_ENVIRONMENT", "AMQP_URL", "DATABASE_URL", "AMQP_CA_FILE"):
        monkeypatch.delenv(name, raising=False)


def refusal(**overrides: object) -> RefusedInProduction:
    with pytest.raises(RefusedInProduction) as caught:
        PaymentSettings(**{**GOOD_PAYMENT, **overrides})
    return caught.value


def test_production_settings_without_a_development_default_start() -> None:
    settings = PaymentSettings(**GOOD_PAYMENT)
    assert URL(settings.amqp_url).query["cafile"] == CA


@pytest.mark.parametrize(
    ("setting", "value", "variable", "says"),
    [
        ("stripe_webhook_secret", "whsec_orderflow_local", "STRIPE_WEBHOOK_SECRET", "local webhook secret"),
        ("stripe_api_key", "sk_test_orderflow_local", "STRIPE_API_KEY", "is a test key (sk_test_...)"),
        ("stripe_api_key", "rk_test_readonly", "STRIPE_API_KEY", "is a test key (rk_test_...)"),
        ("stripe_api_base", "http://127.0.0.1:12111", "STRIPE_API_BASE", "local Stripe server"),
        ("stripe_api_base", "https://localhost:12111", "STRIPE_API_BASE", "local Stripe server"),
        ("stripe_api_base", "http://stripe-mock.internal", "STRIPE_API_BASE", "local Stripe server"),
        ("amqp_url", "amqp://orderflow@orderflow-broker:5672/", "AMQP_URL", "plain AMQP (amqp://)"),
        ("amqp_url", GOOD_AMQP + "?no_verify_ssl=1", "AMQP_URL", "certificate check off"),
        ("database_url", GOOD_DB.replace("verify-full", "require"), "DATABASE_URL", "sslmode=require, not verify-full"),
        ("database_url", GOOD_DB.replace("verify-full", "verify-ca"), "DATABASE_URL", "sslmode=verify-ca"),
        ("database_url", GOOD_DB.split("?")[0], "DATABASE_URL", "sslmode=prefer, not verify-full"),
    ],
)
def test_each_development_default_is_refused_naming_its_setting(
    setting: str, value: str, variable: str, says: str
) -> None:
    line = str(refusal(**{setting: value}))
    assert line.startswith(f"refusing to start in production: {variable} ")
    assert says in line
    assert "\n" not in line


def test_the_defaults_of_a_payment_process_are_all_named_on_one_line() -> None:
    with pytest.raises(RefusedInProduction) as caught:
        PaymentSettings(orderflow_environment="production")
    named = [p.split(" ", 1)[0] for p in caught.value.problems]
    assert named == ["AMQP_URL", "DATABASE_URL", "STRIPE_API_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET"]
    assert caught.value.code == str(caught.value) and "\n" not in str(caught.value)
    assert "sk_test_orderflow_local" not in str(caught.value)  # a key is never printed whole


def test_a_test_key_is_named_without_printing_it() -> None:
    line = str(refusal(stripe_api_key=SecretStr("sk_test_51SecretPart")))
    assert "51SecretPart" not in line


def test_pgsslmode_counts_when_the_url_names_no_sslmode(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = GOOD_DB.split("?")[0]
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    PaymentSettings(**{**GOOD_PAYMENT, "database_url": bare})
    monkeypatch.setenv("PGSSLMODE", "require")
    assert "sslmode=require" in str(refusal(database_url=bare))


@pytest.mark.parametrize("settings_class", [ProcessSettings, OrchestratorSettings, NotifySettings])
def test_every_process_checks_the_broker_and_its_database(settings_class: type[ProcessSettings]) -> None:
    with pytest.raises(RefusedInProduction, match="AMQP_URL is plain AMQP.*DATABASE_URL has sslmode=prefer"):
        settings_class(orderflow_environment="production")
    settings_class(orderflow_environment="production", amqp_url=GOOD_AMQP, database_url=GOOD_DB)


def test_the_environment_variable_turns_production_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERFLOW_ENVIRONMENT", "production")
    with pytest.raises(RefusedInProduction):
        ProcessSettings()
    monkeypatch.setenv("ORDERFLOW_ENVIRONMENT", "prod")  # a typo is a bad setting, not development
    with pytest.raises(ValueError, match="orderflow_environment"):
        ProcessSettings()


def test_outside_production_the_development_defaults_stand() -> None:
    settings = PaymentSettings()
    assert settings.orderflow_environment == "development"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.stripe_api_key.get_secret_value() == "sk_test_orderflow_local"
    assert production.problems(production.process_values(settings))  # they are defaults; only production refuses


def test_the_ca_file_goes_into_the_url_for_aiormq() -> None:
    url = amqp_url_with_ca_file("amqps://u:p%40w@broker:5671/vh?cafile=/old.crt&heartbeat=30", CA)
    assert URL(url).query == {"heartbeat": "30", "cafile": CA}
    assert (URL(url).password, URL(url).path) == ("p@w", "/vh")
    settings = ProcessSettings(amqp_url="amqps://u@broker:5671/", amqp_password="p@w", amqp_ca_file=CA)
    assert (URL(settings.amqp_url).password, URL(settings.amqp_url).query["cafile"]) == ("p@w", CA)


def test_orderctl_migrate_refuses_a_database_url_without_verify_full() -> None:
    good = {f"{s.name}_database_url": GOOD_DB for s in SERVICES}
    settings = CtlSettings(environment="production", admin_database_url=GOOD_DB, **good)
    settings.refuse_development_defaults()
    only_payment = CtlSettings(environment="production", admin_database_url=GOOD_DB, payment_database_url=GOOD_DB)
    only_payment.refuse_development_defaults(only="payment")  # an init container: the other URLs are unused
    with pytest.raises(RefusedInProduction, match="ORDERFLOW_INVENTORY_DATABASE_URL has sslmode=prefer"):
        only_payment.refuse_development_defaults()
    with pytest.raises(RefusedInProduction, match="^refusing to start in production: ORDERFLOW_ADMIN_DATABASE_URL"):
        CtlSettings(environment="production", **good).refuse_development_defaults()
    CtlSettings().refuse_development_defaults()  # development: nothing refused
