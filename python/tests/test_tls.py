"""TLS from `security` (certificate and key files; rustls), with client
certificates required when `client_ca_path` is set. The certificates are
made here with openssl."""

import asyncio
import subprocess

import pytest

from conftest import token, web_service

from deploy_code import TLS, DeployCode, DeployCodeError


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test ca", cwd=d)
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls_with_client_certificates(serve, pki):
    from conftest import free_port

    config = f"""security:
  tls_enabled: true
  cert_path: pki/server.crt
  key_path: pki/server.key
  client_ca_path: pki/ca.crt
  auth: {{enabled: true, method: JWT, jwt_secret: "{{{{ secret('JWT_SECRET') }}}}"}}
  rbac: {{enabled: true}}
""" + web_service(free_port())
    server = serve(config)
    viewer = token("vera", role="viewer")

    async def main():
        mutual = TLS(ca=pki / "ca.crt", cert=pki / "client.crt", key=pki / "client.key")
        async with DeployCode(server.address, token=viewer, tls=mutual) as ok:
            assert (await ok.status()).services == []
        # The server's certificate checks out, but no client certificate.
        async with DeployCode(server.address, token=viewer, tls=TLS(ca=pki / "ca.crt")) as anon:
            with pytest.raises(DeployCodeError):
                await asyncio.wait_for(anon.status(), 20)
        # Plain HTTP/2 to a TLS server.
        async with DeployCode(server.address, token=viewer) as plain:
            with pytest.raises(DeployCodeError):
                await asyncio.wait_for(plain.status(), 20)

    asyncio.run(main())
