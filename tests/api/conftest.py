"""Fixtures for the AWS KMS API suite (helpers live in kmsapi.py)."""

import botocore.session
import pytest

from kmsapi import Api, Keystore, Server


def start_api(request):
    keystore = Keystore()
    request.addfinalizer(keystore.cleanup)
    server = Server(keystore)
    request.addfinalizer(server.stop)
    return Api(keystore, server)


@pytest.fixture(scope="module")
def api(request):
    """One keystore + one server for the whole test module."""
    return start_api(request)


@pytest.fixture
def fresh_api(request):
    """A keystore + server for one test (for tests that stop the server or count events)."""
    return start_api(request)


@pytest.fixture
def key(api):
    """A new enabled symmetric key of alice's."""
    return api.new_key()


@pytest.fixture(scope="session")
def kms_model():
    return botocore.session.get_session().get_service_model("kms")


