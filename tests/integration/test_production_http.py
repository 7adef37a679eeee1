"""A production stack (DEBUG=false) behind a TLS-terminating proxy, spoken to as that proxy would."""

from __future__ import annotations

import httpx

from tests.support.client import UPLOAD_MUTATION, graphql

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "a-real-secret-" + "y" * 50,
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
}
HTTPS = {"X-Forwarded-Proto": "https"}


def test_behind_tls_hsts_and_secure_cookies_plain_http_is_redirected_but_probes_are_not(make_stack, api_user) -> None:
    stack = make_stack(env=PRODUCTION, workers=0)
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{stack.url}{probe}", timeout=10).status_code == 200, probe

    plain = graphql(stack.url, "{ __typename }", headers=api_user.headers)
    assert plain.status_code == 301 and plain.headers["location"].startswith("https://127.0.0.1")

    secure = graphql(stack.url, "{ uploads(first: 1) { totalCount } }", headers={**api_user.headers, **HTTPS})
    assert secure.status_code == 200 and secure.json()["data"]["uploads"]["totalCount"] == 0
    assert secure.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"

    login = httpx.get(f"{stack.url}/accounts/login/", headers=HTTPS, timeout=10)
    cookie = next(h for h in login.headers.get_list("set-cookie") if h.startswith("csrftoken="))
    assert "Secure" in cookie


def test_production_hides_the_schema_and_errors(make_stack, api_user) -> None:
    stack = make_stack(env=PRODUCTION, workers=0)
    introspection = graphql(stack.url, "{ __schema { types { name } } }", headers={**api_user.headers, **HTTPS})
    assert {e["extensions"]["code"] for e in introspection.json()["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}
    typo = graphql(stack.url, UPLOAD_MUTATION.replace("uploadFile", "uploadFil"), headers={**api_user.headers, **HTTPS})
    assert "Did you mean" not in typo.text
    page = httpx.get(f"{stack.url}/graphql", headers={**HTTPS, "Accept": "text/html"}, timeout=10)
    assert page.status_code == 404 and page.headers["content-type"].startswith("application/json")
