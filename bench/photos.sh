# The photo mix of the image rows and the model they run, shared by bench/run.sh,
# bench/image_ab.sh, bench/compare.sh and bench/blob_stores.sh: sourced after IMAGES names the
# folder bench/make_images.py writes the large JPEGs into.
# shellcheck shell=bash
PHOTOS=(tests/fixtures/astronaut.png tests/fixtures/chelsea.png tests/fixtures/coffee.png
        tests/fixtures/grace_hopper.jpg tests/fixtures/rocket.jpg
        "$IMAGES/coffee-12mp.jpg" "$IMAGES/chelsea-12mp.jpg" "$IMAGES/rocket-6mp.jpg")
# shellcheck disable=SC2034 # used by the scripts that source this file
MODEL=crates/classifier/model/efficientnet-lite0.onnx
