# TLS for the node's MQTT link (pysmartnode/mqtt.py): imported only when a node connects with TLS, so
# the many nodes without it do not hold this code (on ports that load modules into the heap).


def context(t, log=None):
    """An ssl.SSLContext for MQTTClient's `tls` dict (ca, verify, cert, key). `log(level, msg)`, when
    given, hears that this board's TLS cannot verify the broker (the client passes it on the first
    connect only)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not hasattr(ssl, "CERT_NONE"):
        # ESP8266: its TLS (axTLS) has no certificate checks at all; encrypted, but the broker unverified.
        if log:
            log("warning", "TLS without certificate verification: this board's TLS cannot verify the broker")
    elif t.get("verify", True):
        ctx.verify_mode = ssl.CERT_REQUIRED
        if t.get("ca"):
            ctx.load_verify_locations(cadata=der(t["ca"]))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if t.get("cert"):  # mbedtls takes the data, as DER
        ctx.load_cert_chain(der(t["cert"]), der(t["key"]))
    return ctx


def der(path):
    """A certificate or key file as DER: MicroPython's mbedtls takes them only so."""
    with open(path, "rb") as f:
        data = f.read()
    begin = data.find(b"-----BEGIN")
    if begin < 0:
        return data
    from binascii import a2b_base64
    body = data[data.find(b"\n", begin) + 1:data.find(b"-----END", begin)]  # the first certificate
    return a2b_base64(b"".join(line.strip() for line in body.split(b"\n")))
