"""remote-viewer connection files: exact text per reference section 7, one value per line."""

from __future__ import annotations

import configparser
import dataclasses

import pytest

from multiconsole.domain.devices import GraphicsType
from multiconsole.domain.errors import FieldError
from multiconsole.wire.vvfile import MIME, ViewerFile, render

CA = "-----BEGIN CERTIFICATE-----\r\nMIIBszCCAVmgAwIBAgIU\nZm9v\n-----END CERTIFICATE-----\n"
COMMON = [
    "delete-this-file=1",
    "fullscreen=0",
    "title=demo:%d",
    "toggle-fullscreen=shift+f11",
    "release-cursor=shift+f12",
    "secure-attention=ctrl+alt+end",
]


def spice(**kw) -> ViewerFile:
    base = dict(
        protocol=GraphicsType.SPICE,
        host="10.0.0.5",
        port=5900,
        password="Ab3+/x9Q",
        ttl=120,
        title="demo",
    )
    return ViewerFile(**(base | kw))


def vnc(**kw) -> ViewerFile:
    return spice(protocol=GraphicsType.VNC, port=5901, **kw)


def parsed(text: str) -> dict[str, str]:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    assert cp.sections() == ["virt-viewer"]
    return dict(cp["virt-viewer"])


def test_mime():
    assert MIME == "application/x-virt-viewer"


def test_spice_without_tls():
    assert render(spice()).splitlines() == [
        "[virt-viewer]",
        "type=spice",
        "host=10.0.0.5",
        "port=5900",
        "password=Ab3+/x9Q",
        "# Password is valid for 120 seconds.",
        *COMMON,
        "enable-smartcard=0",
        "enable-usb-autoshare=0",
    ]


def test_spice_with_tls():
    text = render(spice(tls_port=5902, ca_pem=CA, host_subject="O=example,CN=host1"))
    assert text.endswith("\n")
    assert text.splitlines() == [
        "[virt-viewer]",
        "type=spice",
        "host=10.0.0.5",
        "port=5900",
        "password=Ab3+/x9Q",
        "# Password is valid for 120 seconds.",
        *COMMON,
        "tls-port=5902",
        "enable-smartcard=0",
        "enable-usb-autoshare=0",
        "tls-ciphers=DEFAULT",
        "secure-channels=main;inputs;cursor;playback;record;display;smartcard;usbredir",
        "host-subject=O=example,CN=host1",
        "ca=-----BEGIN CERTIFICATE-----\\nMIIBszCCAVmgAwIBAgIU\\nZm9v\\n-----END CERTIFICATE-----",
    ]


def test_tls_only_spice_has_port_minus_one():
    keys = parsed(render(spice(port=None, tls_port=5902)))
    assert (keys["port"], keys["tls-port"]) == ("-1", "5902")


def test_spice_keys_as_virt_viewer_reads_them():
    keys = parsed(render(spice(tls_port=5902, ca_pem=CA, proxy="http://proxy:3128")))
    assert keys["type"] == "spice"
    assert keys["ca"].count("\\n") == 3
    assert "\r" not in keys["ca"]
    assert keys["proxy"] == "http://proxy:3128"
    assert set(keys) == {
        "type",
        "host",
        "port",
        "password",
        "delete-this-file",
        "fullscreen",
        "title",
        "toggle-fullscreen",
        "release-cursor",
        "secure-attention",
        "tls-port",
        "enable-smartcard",
        "enable-usb-autoshare",
        "tls-ciphers",
        "secure-channels",
        "ca",
        "proxy",
    }


def test_vnc():
    assert render(vnc(ttl=30)).splitlines() == [
        "[virt-viewer]",
        "type=vnc",
        "host=10.0.0.5",
        "port=5901",
        "password=Ab3+/x9Q",
        "# Password is valid for 30 seconds.",
        *COMMON,
    ]


def test_vnc_ignores_spice_only_fields():
    keys = parsed(render(vnc(tls_port=5902, ca_pem=CA, host_subject="CN=h")))
    assert set(keys) == {
        "type",
        "host",
        "port",
        "password",
        "delete-this-file",
        "fullscreen",
        "title",
        "toggle-fullscreen",
        "release-cursor",
        "secure-attention",
    }


def test_vnc_through_a_proxy():
    assert render(vnc(proxy="http://proxy:3128")).splitlines()[-1] == "proxy=http://proxy:3128"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", "10.0.0.5\n[virt-viewer]"),
        ("host", "10.0.0.5\r"),
        ("title", "demo\nfullscreen=1"),
        ("password", "pw\nproxy=http://evil"),
        ("password", "pw\x00"),
        ("host_subject", "CN=h\nca=x"),
        ("proxy", "http://p\n"),
    ],
)
def test_newline_in_a_value_is_refused(field, value):
    vv = dataclasses.replace(spice(tls_port=5902), **{field: value})
    with pytest.raises(FieldError) as info:
        render(vv)
    assert info.value.field == field
    assert info.value.reason == "must be a single line"


def test_newline_in_vnc_title_is_refused():
    with pytest.raises(FieldError) as info:
        render(vnc(title="a\nb"))
    assert info.value.field == "title"
