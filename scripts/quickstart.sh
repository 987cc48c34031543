#!/usr/bin/env bash
bash "$(dirname "$0")/setup.sh"
# The offline quick start: index the sample corpus in samples/corpus (notes, photos, scans, PDFs)
# and run a few searches. Default model: minilm, a text model, so images are found by their
# words (captions, OCR of scans, PDF text layers); photos with neither are listed as having no
# usable representation. With an MLLM the same commands embed the pixels themselves:
#   UMR_MODEL=gme-2b bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL="${UMR_MODEL:-minilm}"
INDEX="${UMR_INDEX:-.umr-quickstart/${MODEL//\//_}}"
umr=.venv/bin/umr

# Run it twice: the second run finds everything unchanged (indexing is resumable).
$umr index samples/corpus --index "$INDEX" --model "$MODEL"

search() {
  echo; printf '$ umr search --index %s' "$INDEX"
  for arg in "$@"; do case "$arg" in *" "*) printf ' "%s"' "$arg" ;; *) printf ' %s' "$arg" ;; esac; done
  echo; $umr search --index "$INDEX" "$@"
}
search "receipt for croissants and coffee" -k 3
search "when does the train to the airport leave" -k 3
search "how to feed birds when the ground is frozen" -k 3
search "the committee decided to buy a water pump" -k 3
search "living simply in a cabin in the woods" -k 3 --modality text
search "a naval officer who was a computer pioneer" -k 3 --modality image,text
search "notes about tea" -k 1 --where folder=notes --json
