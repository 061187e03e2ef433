"""The two tokens M²Chat adds to the VLM (Eq. 1). Their embeddings live in the adapter
file, so the user's VLM folder stays stock."""

CAPTION_START = "<|IC|>"  # starts the image caption y_cap
IMAGE_TOKEN = "<|img|>"  # one of the K image-generation tokens t_img
SPECIAL_TOKENS = (CAPTION_START, IMAGE_TOKEN)  # row order of the adapter's special_token_embeddings
