#!/usr/bin/env python3
"""Writes src/server/kms-model.json: the parts of botocore's KMS service model that input
validation needs (operation -> input shape; shapes with type, members, required members,
length/range limits and enums). Run when botocore's model changes:

    python3 scripts/gen-kms-model.py [path/to/service-2.json.gz]
"""
import gzip, json, os, sys

def find_model():
    import botocore  # noqa: only to locate the installed model
    return os.path.join(os.path.dirname(botocore.__file__), "data/kms/2014-11-01/service-2.json.gz")

src = sys.argv[1] if len(sys.argv) > 1 else find_model()
model = json.load(gzip.open(src))
ops = {}
needed = set()
for name, op in sorted(model["operations"].items()):
    inp = op.get("input", {}).get("shape")
    ops[name] = inp
    if inp:
        needed.add(inp)
shapes = {}
def visit(name):
    if name in shapes:
        return
    s = model["shapes"][name]
    out = {"type": s["type"]}
    for k in ("min", "max", "enum", "required", "pattern"):
        if k in s:
            out[k] = s[k]
    if s["type"] == "structure":
        out["members"] = {m: v["shape"] for m, v in s.get("members", {}).items()}
    elif s["type"] == "list":
        out["member"] = s["member"]["shape"]
    elif s["type"] == "map":
        out["key"] = s["key"]["shape"]
        out["value"] = s["value"]["shape"]
    shapes[name] = out
    for child in list(out.get("members", {}).values()) + [out.get("member"), out.get("key"), out.get("value")]:
        if child:
            visit(child)
for n in sorted(needed):
    visit(n)
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
dest = os.path.join(root, "src/server/kms-model.json")
with open(dest, "w") as f:
    json.dump({"version": model["metadata"].get("apiVersion"), "operations": ops, "shapes": shapes},
              f, indent=1, sort_keys=True)
    f.write("\n")
print(f"wrote {dest}: {len(ops)} operations, {len(shapes)} shapes")
