"""RetinaFace priors and decoding, box expansion, and the mosaic/blur that anonymises."""

import math

import pytest
import torch
import torchvision

from handlers.engine import Parts
from handlers.imaging import fitted_tile, tile_origins, tiles, unletterbox_boxes
from handlers.tasks import face
from handlers.tasks.face import (
    MAX_UPSCALE,
    Faces,
    FaceSettings,
    decode_faces,
    decode_faces_batch,
    ellipse_mask,
    expand_boxes,
    merge_faces,
    mosaic_grid,
    overlap_layers,
    pixelate_batch,
    pixelate_regions,
    prior_boxes,
    spread_cells,
    thorough_views,
    tile_scale,
    tile_side,
)

MIN_SIZES, STEPS, VARIANCES = [[16, 32], [64, 128], [256, 512]], [8, 16, 32], (0.1, 0.2)


@pytest.mark.parametrize("height, width", [(640, 640), (480, 640), (100, 75)])
def test_priors_cover_every_cell_of_every_level_in_output_order(height, width):
    priors = prior_boxes(height, width, MIN_SIZES, STEPS)
    cells = [-(-height // s) * -(-width // s) for s in STEPS]  # ceil divisions
    assert priors.shape == (2 * sum(cells), 4)
    assert priors[:4].tolist() == [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16], [12, 4, 32, 32]]
    last = priors[-1].tolist()  # bottom-right cell of the stride-32 level, largest anchor
    assert last == [(-(-width // 32) - 0.5) * 32, (-(-height // 32) - 0.5) * 32, 512, 512]


def outputs_for(priors, faces):
    """Model outputs in which the given (prior index, score) pairs are faces with zero offsets."""
    n = priors.shape[0]
    loc, landmarks = torch.zeros(n, 4), torch.zeros(n, 10)
    conf = torch.tensor([[1.0, 0.0]]).repeat(n, 1)
    for index, score in faces:
        conf[index] = torch.tensor([1 - score, score])
    return loc, conf, landmarks


def test_zero_offsets_decode_to_the_priors_and_landmarks_to_their_centres():
    priors = prior_boxes(64, 64, MIN_SIZES, STEPS)
    loc, conf, landmarks = outputs_for(priors, [(10, 0.9)])
    faces = decode_faces(loc, conf, landmarks, priors, VARIANCES, FaceSettings())
    cx, cy, w, h = priors[10].tolist()
    assert faces.boxes.tolist() == [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]
    assert faces.landmarks.shape == (1, 5, 2) and (faces.landmarks[0] == torch.tensor([cx, cy])).all()
    assert faces.scores.tolist() == pytest.approx([0.9])


def test_offsets_follow_the_variances():
    priors = torch.tensor([[100.0, 100.0, 20.0, 40.0]])
    loc = torch.tensor([[1.0, -1.0, 0.0, 5.0]])  # centre moves by 0.1 * size; height grows by exp(0.2 * 5)
    landmarks = torch.tensor([[1.0, 0.0] * 5])
    faces = decode_faces(loc, torch.tensor([[0.0, 1.0]]), landmarks, priors, VARIANCES, FaceSettings())
    height = 40 * torch.exp(torch.tensor(1.0)).item()
    assert faces.boxes[0].tolist() == pytest.approx([92.0, 96.0 - height / 2, 112.0, 96.0 + height / 2])
    assert faces.landmarks[0, 0].tolist() == pytest.approx([102.0, 100.0])


def test_threshold_nms_and_max_faces():
    priors = prior_boxes(64, 64, MIN_SIZES, STEPS)
    # priors 0 and 1 share a centre (16px and 32px boxes, IoU 0.25); prior 2 is the next cell.
    loc, conf, landmarks = outputs_for(priors, [(0, 0.95), (1, 0.9), (2, 0.8), (5, 0.3)])
    faces = decode_faces(loc, conf, landmarks, priors, VARIANCES, FaceSettings(score_threshold=0.5))
    assert faces.scores.tolist() == pytest.approx([0.95, 0.9, 0.8])  # 0.3 is below 0.5
    strict = decode_faces(loc, conf, landmarks, priors, VARIANCES, FaceSettings(iou_threshold=0.2, max_faces=1))
    assert strict.scores.tolist() == pytest.approx([0.95])


def test_no_faces_gives_empty_tensors():
    priors = prior_boxes(64, 64, MIN_SIZES, STEPS)
    faces = decode_faces(*outputs_for(priors, []), priors, VARIANCES, FaceSettings())
    assert faces.boxes.shape == (0, 4) and faces.landmarks.shape == (0, 5, 2)


def test_expand_boxes_grows_rounds_outwards_and_clips():
    boxes = torch.tensor([[10.2, 20.7, 30.2, 40.7], [-5.0, 90.0, 5.0, 130.0], [50.0, 50.0, 50.0, 50.0]])
    assert expand_boxes(boxes, 0.1, width=100, height=120) == [(8, 18, 33, 43), (0, 86, 6, 120)]


@pytest.mark.parametrize("blocks, block_size, grid", [(8, 0, (8, 4)), (8, 10, (10, 5)), (200, 0, (100, 50))])
def test_mosaic_grid_of_a_100x50_region(blocks, block_size, grid):
    assert mosaic_grid(100, 50, blocks, block_size) == grid


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randint(0, 256, (3, 120, 160), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize(
    ("height", "width", "rows", "cols"), [(300, 416, 6, 8), (7, 5, 3, 2), (64, 64, 8, 8), (1, 9, 1, 1)]
)
def test_spread_cells_tiles_the_region_with_contiguous_near_equal_blocks(height, width, rows, cols):
    cells = torch.arange(rows * cols, dtype=torch.int64).reshape(1, rows, cols)
    spread = spread_cells(cells, height, width)[0]
    assert spread.shape == (height, width)
    assert spread.unique().tolist() == list(range(rows * cols))  # every cell shows, nothing else
    for r in range(rows):  # cell (r, c) is the block [r*h/rows, (r+1)*h/rows) x [c*w/cols, (c+1)*w/cols)
        for c in range(cols):
            ys, xs = (spread == r * cols + c).nonzero(as_tuple=True)
            assert (ys.min(), ys.max() + 1) == (-(-r * height // rows), -(-(r + 1) * height // rows))
            assert (xs.min(), xs.max() + 1) == (-(-c * width // cols), -(-(c + 1) * width // cols))


def test_mosaic_changes_only_the_regions_with_uniform_blocks(noise):
    regions = [(16, 8, 80, 72), (100, 60, 160, 120)]
    out = pixelate_regions(noise, regions, FaceSettings(blocks=8))
    inside = torch.zeros(120, 160, dtype=torch.bool)
    for x1, y1, x2, y2 in regions:
        inside[y1:y2, x1:x2] = True
    assert torch.equal(out[:, ~inside], noise[:, ~inside])  # nothing outside moved
    block = out[:, 8:16, 16:24]  # first 8x8 cell of the 64x64 region
    assert (block == block[:, :1, :1]).all()
    assert len(torch.unique(out[:, 8:72, 16:80].reshape(3, -1), dim=1).T) <= 64  # one colour per cell
    # Irreversible: the noise's values are gone, replaced by cell means near the middle grey.
    assert (out[:, inside] == noise[:, inside]).float().mean() < 0.02
    assert (out[:, inside].float() - 127.5).abs().max() < 40


def mosaic_one_cell_at_a_time(image, regions, settings):
    """The obvious reference: region after region, over what the earlier left, each cell
    (pixel y in row y * rows // h) set to the rounded-half-up mean of the pixels it covers;
    with the ellipse shape, only the pixels whose centres lie inside it."""
    out = image.clone().long()
    for x1, y1, x2, y2 in regions:
        height, width = y2 - y1, x2 - x1
        rows, cols = mosaic_grid(height, width, settings.blocks, settings.block_size)
        before = out[:, y1:y2, x1:x2].clone()
        for row in range(rows):
            for col in range(cols):
                ys = [y for y in range(height) if y * rows // height == row]
                xs = [x for x in range(width) if x * cols // width == col]
                cell = before[:, ys][:, :, xs]
                mean = (cell.sum(dim=(1, 2)) * 2 + cell[0].numel()) // (cell[0].numel() * 2)
                for y in ys:
                    for x in xs:
                        inside = ((2 * y + 1 - height) / height) ** 2 + ((2 * x + 1 - width) / width) ** 2 <= 1
                        if settings.shape == "box" or inside:
                            out[:, y1 + y, x1 + x] = mean
    return out.to(torch.uint8)


def random_regions(generator, count, height, width, largest):
    corners = torch.rand(count, 2, generator=generator) * torch.tensor([width - 2, height - 2])
    sizes = torch.rand(count, 2, generator=generator) * (largest - 1) + 1
    boxes = torch.cat([corners, torch.minimum(corners + sizes, torch.tensor([width, height]))], dim=1)
    return [tuple(int(v) for v in box) for box in boxes.round().tolist() if box[2] > box[0] and box[3] > box[1]]


@pytest.mark.parametrize("shape", ["box", "ellipse"])
@pytest.mark.parametrize("blocks, block_size", [(8, 0), (3, 0), (8, 5)])
def test_the_mosaic_is_each_cells_mean_drawn_region_after_region(noise, shape, blocks, block_size):
    settings = FaceSettings(blocks=blocks, block_size=block_size, shape=shape)
    regions = random_regions(torch.Generator().manual_seed(blocks + block_size), 6, 120, 160, 50)  # some overlap
    expected = mosaic_one_cell_at_a_time(noise, regions, settings)
    assert torch.equal(pixelate_regions(noise, regions, settings), expected)


@pytest.mark.parametrize("seed", range(4))
def test_a_batchs_mosaic_in_one_pass_draws_what_region_by_region_draws(monkeypatch, seed):
    """The GPU's pass over all the small regions of a batch (layer by layer where they
    overlap), here on the CPU, against the CPU's region by region: equal, for photos of
    several sizes and layouts, box and ellipse, regions that overlap, that touch the edges,
    of one pixel, and larger than the pass takes (drawn alone)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [(120, 160), (75, 50), (200, 90)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]
    images[1] = images[1].permute(1, 2, 0).contiguous().permute(2, 0, 1)  # stored as rows of RGB pixels
    regions = [random_regions(generator, 12, h, w, 70) + [(0, 0, 1, 1), (0, 0, w, h)] for h, w in sizes]
    settings = [FaceSettings(shape="ellipse"), FaceSettings(blocks=5), FaceSettings(block_size=7)]
    one_by_one = pixelate_batch(images, regions, settings)
    monkeypatch.setattr(face, "BATCHED_MOSAIC_DEVICES", ("cpu",))
    monkeypatch.setattr(face, "BATCHED_MOSAIC_AREA", 3000)  # the whole photos are drawn alone
    monkeypatch.setattr(face, "BATCHED_MOSAIC_PIXELS", 5000)  # several passes per layer
    batched = pixelate_batch(images, regions, settings)
    assert all(torch.equal(a, b) for a, b in zip(batched, one_by_one, strict=True))
    assert all(out.stride()[0] == 1 for out in batched)  # stored as rows of RGB pixels: what libjpeg reads


def test_overlap_layers_put_a_region_after_every_earlier_one_it_overlaps():
    regions = [(0, 0, 10, 10), (5, 5, 15, 15), (20, 20, 30, 30), (8, 0, 12, 4), (10, 0, 20, 5), (0, 0, 10, 10)]
    images = [0, 0, 0, 0, 0, 1]  # the last is in another photo
    # 1 and 3 overlap 0; 4 touches 0 and 1 (no overlap) and overlaps 3; 5 is alone in its photo
    assert overlap_layers(regions, images) == [[0, 2, 5], [1, 3], [4]]
    assert overlap_layers([], []) == []


def test_block_size_sets_the_cell_size(noise):
    out = pixelate_regions(noise, [(0, 0, 40, 40)], FaceSettings(block_size=20))
    assert len(torch.unique(out[:, :40, :40].reshape(3, -1), dim=1).T) == 4


def test_blur_changes_only_the_region_and_smooths_it(noise):
    out = pixelate_regions(noise, [(20, 20, 100, 100)], FaceSettings(mode="blur"))
    assert torch.equal(out[:, :20], noise[:, :20]) and torch.equal(out[:, :, 100:], noise[:, :, 100:])
    assert out[:, 20:100, 20:100].float().std() < noise[:, 20:100, 20:100].float().std() / 4


def test_input_is_never_modified(noise):
    before = noise.clone()
    pixelate_regions(noise, [(0, 0, 50, 50)], FaceSettings())
    assert torch.equal(noise, before)


@pytest.mark.parametrize(
    "values", [{"input_size": 100}, {"mode": "erase"}, {"format": "png"}, {"margin": -0.1}, {"blocks": 0}]
)
def test_settings_reject_bad_values(values):
    with pytest.raises(ValueError):
        FaceSettings(**values)


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_decodes_what_each_image_decodes_alone(seed):
    """decode_faces_batch against the obvious per-image steps (torchvision's NMS), each
    image with its own settings."""
    generator = torch.Generator().manual_seed(seed)
    priors = prior_boxes(64, 96, [[16, 32], [64, 128]], [8, 16])
    batch, rows = 4, len(priors)
    loc = torch.randn(batch, rows, 4, generator=generator) * 0.3
    conf = torch.softmax(torch.randn(batch, rows, 2, generator=generator) * 3, dim=-1)
    landmarks = torch.randn(batch, rows, 10, generator=generator) * 0.3
    settings = [
        FaceSettings(),
        FaceSettings(score_threshold=0.9, max_faces=2),
        FaceSettings(score_threshold=0.2, iou_threshold=0.6, top_k=30),
        FaceSettings(score_threshold=1.0),  # nothing passes
    ]
    together = decode_faces_batch(loc, conf, landmarks, priors, VARIANCES, settings)
    for image, setting in enumerate(settings):
        alone = reference_faces(loc[image], conf[image], landmarks[image], priors, setting)
        got = (together[image].boxes, together[image].scores, together[image].landmarks)
        for field, expected in zip(got, alone, strict=True):
            assert torch.allclose(field, expected, atol=1e-5)
    assert len(together[0].boxes) > 0 and len(together[1].boxes) == 2 and len(together[3].boxes) == 0


def reference_faces(loc, conf, landmarks, priors, settings):
    scores = conf[:, 1]
    keep = (scores > settings.score_threshold).nonzero().squeeze(1)
    keep = keep[scores[keep].argsort(descending=True)[: settings.top_k]]
    anchors, scores = priors[keep], scores[keep]
    centres = anchors[:, :2] + loc[keep, :2] * VARIANCES[0] * anchors[:, 2:]
    sizes = anchors[:, 2:] * torch.exp(loc[keep, 2:] * VARIANCES[1])
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    points = anchors[:, None, :2] + landmarks[keep].view(-1, 5, 2) * VARIANCES[0] * anchors[:, None, 2:]
    kept = torchvision.ops.nms(boxes, scores, settings.iou_threshold)[: settings.max_faces]
    return boxes[kept], scores[kept], points[kept]


@pytest.mark.parametrize("length, tile, overlap", [(100, 640, 160), (640, 640, 160), (641, 640, 160), (3200, 640, 160),
                                                   (1000, 640, 160), (5000, 640, 200)])  # fmt: skip
def test_tiles_cover_the_side_and_neighbours_share_the_overlap(length, tile, overlap):
    starts = tile_origins(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile >= length and starts == sorted(set(starts))
    ends = [start + tile for start in starts]
    assert all(end - start >= overlap for start, end in zip(starts[1:], ends, strict=False))
    assert len(starts) == 1 or ends[-1] == length


@pytest.mark.parametrize("length, tile, overlap, multiple", [(3840, 1280, 256, 32), (2400, 1280, 256, 32),
                                                             (1200, 1280, 256, 32), (1281, 1280, 256, 32),
                                                             (3000, 640, 160, 1), (100, 640, 160, 32)])  # fmt: skip
def test_tiles_fitted_to_a_side_are_as_many_no_larger_and_see_less_beyond_it(length, tile, overlap, multiple):
    fitted = fitted_tile(length, tile, overlap, multiple)
    starts = tile_origins(length, fitted, overlap)
    assert fitted <= tile and fitted % multiple == 0 and len(starts) == len(tile_origins(length, tile, overlap))
    ends = [start + fitted for start in starts]
    assert all(end - start >= overlap for start, end in zip(starts[1:], ends, strict=False))
    assert ends[-1] - length < multiple  # what the tiles see past the side: the rounding only
    assert fitted_tile(3840, 1280, 256, 32) == 1152


def test_a_tile_s_geometry_maps_its_pixels_back_into_the_photo():
    image = torch.zeros(3, 900, 1500, dtype=torch.uint8)
    image[:, 400:450, 1000:1060] = 255  # a bright block, as a face would be
    views, geometries = tiles(image, 2.0, 640, 160, (0, 0, 0))
    height, width = views.shape[2:]  # 1800 x 3000 in 4 x 6 tiles fitted to it
    assert (height, width) == (570, 634) and len(views) == len(geometries) == 4 * 6
    whole = 0
    for view, geometry in zip(views, geometries, strict=True):
        ys, xs = (view[0] > 127).nonzero(as_tuple=True)
        if len(xs) and xs.max() < width - 1 and ys.max() < height - 1 and xs.min() > 0 and ys.min() > 0:  # whole
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            assert unletterbox_boxes(box, geometry).tolist() == [[1000, 400, 1060, 450]]
            whole += 1
    assert whole >= 1


def test_more_tiles_than_allowed_reduce_the_scale_and_small_photos_are_enlarged():
    assert tile_scale(300, 200, 640, 160, 1280, 24) == MAX_UPSCALE
    assert tile_scale(1600, 1000, 640, 160, 1280, 24) == 1.0
    scale = tile_scale(8000, 5000, 640, 160, 1280, 24)
    assert scale < 1 and len(tile_origins(round(5000 * scale), 640, 160)) * len(
        tile_origins(round(8000 * scale), 640, 160)) <= 24  # fmt: skip


def test_a_face_seen_whole_in_one_view_and_cut_in_another_is_one_face():
    """Views' faces in the photo's pixels: the same face twice (NMS), and its part at a
    tile's edge (inside the whole face's box) -- one face, the whole one."""
    whole = Faces(torch.tensor([[100.0, 100, 200, 220]]), torch.tensor([0.9]), torch.zeros(1, 5, 2))
    again = Faces(torch.tensor([[102.0, 98, 201, 221]]), torch.tensor([0.8]), torch.zeros(1, 5, 2))
    cut = Faces(torch.tensor([[100.0, 100, 140, 220]]), torch.tensor([0.95]), torch.zeros(1, 5, 2))
    other = Faces(torch.tensor([[400.0, 100, 450, 160]]), torch.tensor([0.7]), torch.zeros(1, 5, 2))
    merged = merge_faces([whole, again, cut, other], FaceSettings())
    assert merged.boxes.tolist() == [[100.0, 100, 200, 220], [400.0, 100, 450, 160]]


def test_a_photo_is_also_seen_enlarged_and_reduced_where_a_face_could_be_too_small_or_too_large():
    """thorough_views: a 1600x1000 or 1920x1080 photo is seen at its own size and at 2x
    (Parts); a 400x300 one at 1.6x (upscale_to 640) and at 2x; a 300x200 one at 2x
    (upscale_to already enlarges it that much) and at 4x, twice its first view. A larger
    photo's 2x view in tiles (at most max_tiles, else less enlarged, and not at all where that
    is under 1.25x the first view); a photo larger than max_view_pixels in tiles at its own
    size -- as few as tiles of tile_side (2880 px) take. And where its first view's short
    side passes LARGEST_FACE (700), reduced to 640 px on its long side as well (reduced_view),
    last: an 800x600 photo is not, nor a 512x512 one enlarged to 640."""

    def scales(width, height, **settings):
        prepared = thorough_views(torch.zeros(3, height, width, dtype=torch.uint8), FaceSettings(**settings))
        views = prepared if isinstance(prepared, Parts) else [prepared]
        return [[round(g.scale_x, 2) for g in (geometry if isinstance(geometry, list) else [geometry])]
                for _, geometry in views]  # fmt: skip

    assert scales(1600, 1000) == [[1.0], [2.0], [0.4]]
    assert scales(400, 300) == [[1.6], [2.0]]
    assert scales(300, 200) == [[2.0], [4.0]]  # upscale_to already enlarges it 2x: its 2x view is 4x
    assert scales(380, 250) == [[1.68], [3.37]]  # under 400 px: 640 px, then twice that
    assert scales(300, 200, enlarged_view=False) == [[2.0]]
    assert scales(1600, 1000, enlarged_view=False) == [[1.0], [0.4]]
    assert scales(1600, 1000, enlarged_view=False, reduced_view=False) == [[1.0]]
    assert scales(1920, 1080) == [[1.0], [2.0], [0.33]]  # 1080p: its 2x view fits exactly
    assert scales(2000, 1500) == [[1.0], [2.0] * 4, [0.32]]  # its 2x view (12 MP) in 4 tiles of at most 2880 px
    assert scales(3200, 2000) == [[1.0], [2.0] * 6, [0.2]]
    assert scales(4032, 3024) == [[1.0] * 4, [2.0] * 9, [0.16]]  # a phone's 12 MP: 2x takes 48 tiles of 1280
    assert scales(4032, 3024, max_tiles=24) == [[1.0] * 4, [1.31] * 4, [0.16]]  # 24 of them: 1.31x
    assert scales(6000, 4000) == [[1.0] * 6, [1.31] * 6, [0.11]]  # 24 MP: 2x would take 96 tiles
    assert scales(7300, 5470) == [[1.0] * 6, [0.09]]  # 40 MP: 42 tiles at its own size, nothing to enlarge
    assert scales(7300, 5470, max_tiles=24) == [[0.73] * 4, [0.09]]  # 24 of them: reduced
    assert scales(800, 600) == [[1.0], [2.0]]  # a face filling it is no more than 600 px
    assert scales(512, 512) == [[1.25], [2.0]]  # 640x640: enlarged, its short side still under 700
    assert scales(1024, 768) == [[1.0], [2.0], [0.62]]
    assert scales(1280, 720) == [[1.0], [2.0], [0.5]]  # a 720p frame: a face filling it passes 700 px


@pytest.mark.parametrize("max_view_pixels", [1280 * 1280, 1280 * 1280 + 1, 4_000_000, 8_294_400, 33_554_432])
def test_a_tile_is_the_largest_square_of_the_stride_that_one_view_may_hold(max_view_pixels):
    side = tile_side(max_view_pixels)
    assert side % 32 == 0 and side * side <= max_view_pixels < (side + 32) ** 2
    assert tile_side(8_294_400) == 2880


@pytest.mark.parametrize("mode", ["mosaic", "blur"])
def test_the_ellipse_shape_changes_the_inscribed_ellipse_only(noise, mode):
    region = (16, 8, 96, 72)  # 80 x 64
    out = pixelate_regions(noise, [region], FaceSettings(mode=mode, shape="ellipse"))
    boxed = pixelate_regions(noise, [region], FaceSettings(mode=mode))
    x1, y1, x2, y2 = region
    mask = ellipse_mask(y2 - y1, x2 - x1)
    assert mask[32, 40] and not mask[0, 0] and not mask[-1, -1] and mask.float().mean().item() == pytest.approx(
        math.pi / 4, abs=0.02)  # fmt: skip
    inside = torch.zeros(120, 160, dtype=torch.bool)
    inside[y1:y2, x1:x2] = mask
    assert torch.equal(out[:, ~inside], noise[:, ~inside])  # the corners and the rest: untouched
    assert torch.equal(out[:, inside], boxed[:, inside])  # inside: what the box would show
