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


# --- pinned details (mutation testing: each wrong change must fail a test) ---------------


def test_secure_channels_constant():
    from multiconsole.wire.vvfile import CHANNELS, SECURE_CHANNELS

    assert SECURE_CHANNELS == "main;inputs;cursor;playback;record;display;smartcard;usbredir"
    assert sorted(CHANNELS) == sorted(SECURE_CHANNELS.split(";"))


def test_a_value_with_ordinary_characters_is_kept():
    # Letters like X are fine: only CR, LF and NUL are refused.
    keys = parsed(render(spice(title="X-ray", password="XyZ")))
    assert (keys["title"], keys["password"]) == ("X-ray:%d", "XyZ")


def test_ttl_is_written_as_whole_seconds():
    assert "# Password is valid for 7 seconds." in render(spice(ttl=7.9)).splitlines()


def test_unknown_secure_channel_is_refused():
    with pytest.raises(FieldError) as info:
        render(spice(tls_port=5902, secure_channels=("main", "bogus")))
    assert info.value.field == "secure_channels"
    assert info.value.reason == (
        "SPICE channels are cursor, display, inputs, main, playback, record, smartcard, usbredir"
    )


def test_chosen_secure_channels_are_written():
    keys = parsed(render(spice(tls_port=5902, secure_channels=("main", "display"))))
    assert keys["secure-channels"] == "main;display"


def test_no_secure_channels_writes_no_line():
    keys = parsed(render(spice(tls_port=5902, secure_channels=())))
    assert "secure-channels" not in keys
    assert keys["tls-ciphers"] == "DEFAULT"


def test_empty_host_subject_and_ca_write_no_line():
    keys = parsed(render(spice(tls_port=5902, host_subject="", ca_pem="")))
    assert "host-subject" not in keys and "ca" not in keys


def test_newline_in_spice_title_without_tls_is_refused():
    with pytest.raises(FieldError) as info:
        render(spice(title="a\nb"))
    assert (info.value.field, info.value.reason) == ("title", "must be a single line")


@pytest.mark.parametrize(
    "ca",
    [
        "MIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",  # no BEGIN line
        "-----BEGIN CERTIFICATE-----\nZm9v\n[virt-viewer]\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nZm9v\\n\n-----END CERTIFICATE-----",
    ],
)
def test_ca_that_is_not_pem_is_refused(ca):
    with pytest.raises(FieldError) as info:
        render(spice(tls_port=5902, ca_pem=ca))
    assert (info.value.field, info.value.reason) == ("ca", "must be PEM certificates")


def test_ca_with_surrounding_blank_lines_is_trimmed():
    keys = parsed(render(spice(tls_port=5902, ca_pem="\n\n" + CA + "\n\n")))
    assert keys["ca"] == (
        "-----BEGIN CERTIFICATE-----\\nMIIBszCCAVmgAwIBAgIU\\nZm9v\\n-----END CERTIFICATE-----"
    )


def test_empty_proxy_writes_no_line():
    assert "proxy" not in parsed(render(spice(proxy="")))


def ticket(**kw) -> dict:
    base = {
        "protocol": "spice",
        "address": "10.0.0.5",
        "port": 5900,
        "password": "Ab3+/x9Q",
        "ttl": 120,
        "vm": "demo",
        "tls_port": 5902,
    }
    return base | kw


def test_from_ticket_with_ca_and_subject_opens_all_channels_over_tls():
    from multiconsole.wire.vvfile import from_ticket

    text = from_ticket(ticket(ca=CA, host_subject="CN=h1"), proxy="http://proxy:3128")
    assert text == render(spice(tls_port=5902, ca_pem=CA, host_subject="CN=h1", proxy="http://proxy:3128"))
    keys = parsed(text)
    assert keys["secure-channels"] == "main;inputs;cursor;playback;record;display;smartcard;usbredir"
    assert (keys["host-subject"], keys["proxy"]) == ("CN=h1", "http://proxy:3128")


def test_from_ticket_without_ca_opens_no_channel_over_tls():
    from multiconsole.wire.vvfile import from_ticket

    keys = parsed(from_ticket(ticket()))
    assert "secure-channels" not in keys and "ca" not in keys and "proxy" not in keys
    assert (keys["type"], keys["host"], keys["port"], keys["password"]) == (
        "spice",
        "10.0.0.5",
        "5900",
        "Ab3+/x9Q",
    )
    assert (keys["title"], keys["tls-port"]) == ("demo:%d", "5902")
    assert "# Password is valid for 120 seconds." in from_ticket(ticket()).splitlines()


def test_from_ticket_uses_the_vms_secure_channels():
    from multiconsole.wire.vvfile import from_ticket

    with_ca = parsed(from_ticket(ticket(ca=CA, secure_channels=["main", "inputs"])))
    assert with_ca["secure-channels"] == "main;inputs"
    without_ca = parsed(from_ticket(ticket(secure_channels=["display"])))
    assert without_ca["secure-channels"] == "display"


def test_from_ticket_vnc():
    from multiconsole.wire.vvfile import from_ticket

    assert from_ticket(ticket(protocol="vnc", port=5901, tls_port=None)) == render(vnc())


def test_viewer_file_is_immutable():
    vv = spice()
    with pytest.raises(dataclasses.FrozenInstanceError):
        vv.password = "other"  # type: ignore[misc]
