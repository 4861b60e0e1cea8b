"""Who may open the operator's pages (/calls, /phone, their events and credentials):
this machine, or whoever holds METRICS_TOKEN. Plain HTTP against the real server."""

import signal
import socket

import pytest
import requests

PAGES = [
    ("GET", "/calls"),
    ("GET", "/phone"),
    ("GET", "/calls/events"),
    ("POST", "/phone/credential"),
]
FORWARDED = {"X-Forwarded-For": "203.0.113.9"}  # as ngrok forwards a request from elsewhere
TOKEN = "operator-test-token"


def ask(server, method, path, host="127.0.0.1", **options):
    url = f"http://{host}:{server.port}{path}"
    return requests.request(method, url, timeout=5, stream=True, allow_redirects=False, **options)


def this_machines_address():
    """An address of this machine other than loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # no packet is sent: it only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize("method, path", PAGES)
def test_the_pages_open_from_this_machine(server, method, path):
    response = ask(server, method, path)
    assert response.status_code == 200
    response.close()


@pytest.mark.parametrize("method, path", PAGES)
def test_a_forwarded_request_without_the_token_is_refused(server, method, path):
    response = ask(server, method, path, headers=FORWARDED)
    assert response.status_code == 403
    assert "served to this machine only; set METRICS_TOKEN" in response.text
    server.wait_for(rf"\[127\.0\.0\.1:\d+\] {path} refused \(403 Forbidden\)")


def test_a_request_from_another_address_is_refused(start_server):
    address = this_machines_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    server = start_server(HOST="0.0.0.0")
    assert ask(server, "GET", "/calls", host=address).status_code == 403
    assert ask(server, "GET", "/calls", host="127.0.0.1").status_code == 200


def test_the_token_opens_the_pages_from_elsewhere(start_server):
    server = start_server(METRICS_TOKEN=TOKEN)
    bearer = {**FORWARDED, "Authorization": f"Bearer {TOKEN}"}
    for method, path in PAGES:
        response = ask(server, method, path, headers=bearer)
        assert response.status_code == 200, path
        response.close()
    wrong = ask(server, "GET", "/calls", headers={**FORWARDED, "Authorization": "Bearer no"})
    assert wrong.status_code == 403
    assert "need METRICS_TOKEN" in wrong.text
    # A browser cannot send a bearer: ?token= once sets a cookie that stands for it.
    session = requests.Session()
    visit = session.get(
        f"http://127.0.0.1:{server.port}/calls?token={TOKEN}",
        headers=FORWARDED,
        allow_redirects=False,
        timeout=5,
    )
    assert visit.status_code == 302 and visit.headers["Location"] == "/calls"
    cookie = visit.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    page = session.get(f"http://127.0.0.1:{server.port}/phone", headers=FORWARDED, timeout=5)
    assert page.status_code == 200 and "Call" in page.text
    wrong_visit = ask(server, "GET", f"/calls?token=not-{TOKEN}", headers=FORWARDED)
    assert wrong_visit.status_code == 403 and "Set-Cookie" not in wrong_visit.headers
    # /metrics keeps its own rule: the bearer, even from this machine.
    assert ask(server, "GET", "/metrics").status_code == 401
    assert ask(server, "GET", "/metrics", headers=bearer).status_code == 200


def test_the_pages_code_and_style_are_served_to_anyone(server):
    for name in ("live.js", "phone.js", "capture-worklet.js", "style.css"):
        response = ask(server, "GET", f"/browser/{name}", headers=FORWARDED)
        assert response.status_code == 200, name


def test_without_the_auth_token_the_softphone_needs_no_credential(server):
    assert ask(server, "POST", "/phone/credential").json() == {"credential": None}


def test_the_event_stream_starts_with_a_snapshot(server):
    response = ask(server, "GET", "/calls/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    first = next(response.iter_lines(decode_unicode=True))
    assert first == "event: snapshot"
    response.close()


def test_an_open_page_does_not_hold_up_a_drain(start_server):
    """SIGTERM drains the calls; a page's event stream ends with the last of them, so that
    a page left open in a browser does not keep the old server alive through a deploy."""
    server = start_server()
    events = ask(server, "GET", "/calls/events")
    assert next(events.iter_lines(decode_unicode=True)) == "event: snapshot"
    assert server.stop(signal.SIGTERM, timeout=5) == 0
    rest = b"".join(events.iter_content(None))  # returns when the stream ends (or times out)
    assert b"event:" not in rest  # nothing happened: no call
