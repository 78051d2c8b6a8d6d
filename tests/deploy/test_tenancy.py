"""docs/cluster.md §4's per-tenant object-store keys, run against a real SeaweedFS: the example identity of
docs/examples/seaweedfs-identities.json reads and writes its own bucket and is refused everywhere else; the MinIO
policy example grants exactly one bucket."""

import json
import os
from pathlib import Path

import pytest

from memaudit.errors import MemauditError
from memaudit.store import S3Store
from tests.support.services import SeaweedFS

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
TENANT_BUCKET, OTHER_BUCKET = "memaudit-team-a", "memaudit-team-b"


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory):
    """SeaweedFS with the documented tenant identity (its placeholder keys replaced) and both teams' buckets."""
    keys = ("team-a-key", "team-a-secret-" + os.urandom(6).hex())
    text = (EXAMPLES / "seaweedfs-identities.json").read_text()
    text = text.replace("TEAM_A_ACCESS_KEY", keys[0]).replace("TEAM_A_SECRET_KEY", keys[1])
    weed = SeaweedFS(tmp_path_factory.mktemp("tenancy"), tenants=json.loads(text)["identities"])
    weed.start()
    try:
        for bucket in (TENANT_BUCKET, OTHER_BUCKET):  # the store's admin creates the buckets
            S3Store(weed.endpoint, bucket, weed.access_key, weed.secret_key, retries=0).put_bytes("x/admin", b"a")
        yield weed, keys
    finally:
        weed.stop()


@pytest.mark.integration
def test_the_tenants_key_works_in_its_own_bucket(tenancy):
    weed, keys = tenancy
    store = S3Store(weed.endpoint, TENANT_BUCKET, *keys, create_bucket=False, retries=0)
    store.put_bytes("fp/shadows/0/scores.npz", b"scores")
    store.write_complete("fp/shadows/0")
    assert store.get_bytes("fp/shadows/0/scores.npz") == b"scores"
    assert store.list_keys("fp") == ["fp/shadows/0/COMPLETE", "fp/shadows/0/scores.npz"]


@pytest.mark.integration
@pytest.mark.parametrize("action", ["read", "write", "create a bucket"])
def test_the_tenants_key_is_refused_outside_its_bucket(tenancy, action):
    weed, keys = tenancy
    bucket = "memaudit-team-c" if action == "create a bucket" else OTHER_BUCKET
    with pytest.raises(MemauditError, match=r"rejected the credentials \(AccessDenied\)"):
        store = S3Store(weed.endpoint, bucket, *keys, create_bucket=action == "create a bucket", retries=0)
        if action == "read":
            store.get_bytes("x/admin", verify=False)
        elif action == "write":
            store.put_bytes("fp/forged", b"f")


def test_the_minio_policy_grants_one_bucket_and_no_admin_action():
    policy = json.loads((EXAMPLES / "minio-tenant-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{TENANT_BUCKET}", f"arn:aws:s3:::{TENANT_BUCKET}/*"}
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions
    assert not any(
        a.endswith("*") or ("Bucket" in a and a.startswith(("s3:Create", "s3:Delete", "s3:Put"))) for a in actions
    )
