# Reference outputs of torchvision (PIL path) for the transforms test in
# dyrep-runtime/src/data/transforms.rs: prints the CHW uint8 values the test embeds.
#   python3 benches/peer/transforms_ref.py   (needs torchvision and pillow)
import numpy as np, torchvision.transforms.functional as F
from PIL import Image
w,h=9,7
a=np.zeros((h,w,3),np.uint8)
for y in range(h):
    for x in range(w):
        a[y,x]=[(x*37+y*11)%256,(x*5+y*29)%256,(x*y*7)%256]
im=Image.fromarray(a)
# resized crop: top=2, left=1, height=5, width=6 -> 4x4 bilinear (PIL path)
rc=np.asarray(F.resized_crop(im,2,1,5,6,[4,4],interpolation=F.InterpolationMode.BILINEAR))
# eval: Resize(5) shorter side then CenterCrop(4)
ev=np.asarray(F.center_crop(F.resize(im,5,interpolation=F.InterpolationMode.BILINEAR),[4,4]))
up=np.asarray(F.resized_crop(im,0,0,7,9,[11,13],interpolation=F.InterpolationMode.BILINEAR))
for name,arr in [("RESIZED_CROP",rc),("EVAL",ev)]:
    print(name, arr.transpose(2,0,1).reshape(-1).tolist())
print("UP_SUM", int(up.astype(np.int64).sum()), up.shape, up[5,6].tolist())
