"""Health, authentication, OpenAPI documents and the offline docs pages."""

import kiapi_echo


async def test_health_reports_plugins_capabilities_queue_and_memory(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        body = (await http.get("/health")).json()
    assert body["status"] == "ok" and body["demo"] is True and body["version"]
    assert body["capabilities"][0]["name"] == "echo"
    assert body["capabilities"][0]["models"][0] == {"name": "small", "default": True, "ready": True}
    assert "queue" in body and "memory" in body and body["plugin_errors"] == []


async def test_core_alone_serves_health_and_openapi(kiapi_client_factory):
    async with kiapi_client_factory() as http:
        assert (await http.get("/health")).json()["capabilities"] == []
        assert (await http.get("/openapi.json")).status_code == 200


async def test_bearer_token_guards_everything_but_health(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], auth_token="s3cret") as http:
        assert (await http.get("/health")).status_code == 200
        for path in ("/v1/jobs", "/v1/files", "/openapi.json", "/v1/text/echo/models", "/docs"):
            r = await http.get(path)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
        assert (await http.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await http.post("/v1/text/echo/render", json={"text": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_openapi_documents_and_docs_pages(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        root = (await http.get("/openapi.json")).json()
        assert "/v1/text/echo/openapi.json" in root["info"]["description"]
        doc = (await http.get("/v1/text/echo/openapi.json")).json()
        assert doc["x-kiapi-capability"] == "echo" and doc["x-kiapi-domain"] == "text"
        assert doc["x-kiapi-root-openapi"] == "/openapi.json"
        assert "/v1/text/echo/render" in doc["paths"]
        for page in ("/docs", "/redoc", "/v1/text/echo/docs", "/v1/text/echo/redoc"):
            html = (await http.get(page)).text
            assert "cdn" not in html.lower() and "/-/static/" in html, page
            for asset in [p.split('"')[0] for p in html.split('"/-/static/')[1:]]:
                r = await http.get("/-/static/" + asset)
                assert r.status_code == 200 and len(r.content) > 1000, asset


async def test_demo_mode_says_outputs_are_noise(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=True) as http:
        models = (await http.get("/v1/text/echo/models")).json()
        assert all("noise" in m["demo"] for m in models)
        r = await http.post("/v1/text/echo/render", json={"text": "x"}, headers={"Accept": "application/json"})
        assert any("noise" in w for w in r.json()["warnings"]) and "noise" in r.headers["x-kiapi-warnings"]
    async with kiapi_client_factory(plugins=[kiapi_echo], demo=False) as http:
        assert "demo" not in (await http.get("/v1/text/echo/models")).json()[0]


async def test_auth_scheme_is_case_insensitive_and_health_is_minimal_without_token(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], auth_token=" s3cret ") as http:
        anonymous = (await http.get("/health")).json()
        assert anonymous == {"status": "ok", "version": anonymous["version"]}
        full = (await http.get("/health", headers={"Authorization": "bearer s3cret"})).json()
        assert full["capabilities"][0]["name"] == "echo"
        assert (await http.get("/v1/jobs", headers={"Authorization": "BEARER  s3cret"})).status_code == 200
        assert (await http.get("/v1/jobs", headers={"Authorization": "Basic s3cret"})).status_code == 401
