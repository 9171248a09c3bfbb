"""TagResource, UntagResource, ListResourceTags."""

from kmsapi import key_arn, raises_code


def tags(api, key):
    return {t["TagKey"]: t["TagValue"] for t in api.alice.list_resource_tags(KeyId=key)["Tags"]}


def test_tag_untag_list(api, key):
    assert tags(api, key) == {}
    api.alice.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "a"}])
    assert tags(api, key) == {"env": "prod", "team": "a"}
    api.alice.tag_resource(KeyId=key_arn(key), Tags=[{"TagKey": "env", "TagValue": "dev"}])
    assert tags(api, key) == {"env": "dev", "team": "a"}, "tagging an existing key replaces its value"
    api.alice.untag_resource(KeyId=key, TagKeys=["env"])
    assert tags(api, key) == {"team": "a"}
    api.alice.untag_resource(KeyId=key, TagKeys=["never-set"])
    assert tags(api, key) == {"team": "a"}


def test_list_tags_paging(api, key):
    api.alice.tag_resource(KeyId=key, Tags=[{"TagKey": f"k{i}", "TagValue": str(i)} for i in range(5)])
    first = api.alice.list_resource_tags(KeyId=key, Limit=2)
    assert first["Truncated"] is True and len(first["Tags"]) == 2
    got = first["Tags"]
    marker = first["NextMarker"]
    while marker:
        page = api.alice.list_resource_tags(KeyId=key, Limit=2, Marker=marker)
        got += page["Tags"]
        marker = page.get("NextMarker") if page["Truncated"] else None
    assert sorted(t["TagKey"] for t in got) == [f"k{i}" for i in range(5)]


def test_reserved_aws_prefix_is_tag_exception(api, key):
    with raises_code("TagException"):
        api.alice.tag_resource(KeyId=key, Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])
    assert tags(api, key) == {}


def test_tag_validation(api, key):
    with raises_code("ValidationException", "TagException"):
        api.alice_raw.tag_resource(KeyId=key, Tags=[{"TagKey": "k" * 129, "TagValue": "x"}])
    with raises_code("NotFoundException"):
        api.alice.tag_resource(KeyId="00000000-0000-0000-0000-000000000000", Tags=[{"TagKey": "a", "TagValue": "b"}])


def test_tags_need_permission(api, key):
    with raises_code("AccessDeniedException"):
        api.bob.tag_resource(KeyId=key, Tags=[{"TagKey": "a", "TagValue": "b"}])
    with raises_code("AccessDeniedException"):
        api.bob.list_resource_tags(KeyId=key)
