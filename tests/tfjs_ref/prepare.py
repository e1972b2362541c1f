"Dev-only: write the reference photos as raw RGB bytes + index.json for record.mjs (see README.md)"
import sys, json, importlib.util
from pathlib import Path
from PIL import Image

# photos that ship inside packages lskd depends on, so the reference test runs anywhere
REF_IMAGES = {'astronaut': ('skimage', 'data/astronaut.png'), 'coffee': ('skimage', 'data/coffee.png'),
              'grace_hopper': ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
              'china': ('sklearn', 'datasets/images/china.jpg')}

def ref_image_path(name, root=None):
    "Path of reference photo `name`: inside its installed package, or under `root/<package>/` (an unpacked wheel)"
    pkg, rel = REF_IMAGES[name]
    if root: return Path(root)/pkg/rel
    spec = importlib.util.find_spec(pkg)
    return Path(spec.submodule_search_locations[0])/rel

if __name__ == '__main__':
    out, root = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for name in REF_IMAGES:
        im = Image.open(ref_image_path(name, root)).convert('RGB')
        (out/f'{name}.rgb').write_bytes(im.tobytes())
        index.append(dict(name=name, width=im.width, height=im.height))
    (out/'index.json').write_text(json.dumps(index))
