/* labmq — sim-camera: a simulated scientific camera.
 *
 * Frames are 16-bit little-endian pixel counts of a `bit_depth` sensor: a dark
 * offset, read noise and a Gaussian spot (a focused beam) that wanders along a
 * Lissajous path, with brightness proportional to the exposure and clipping at
 * full scale. Generation is cheap enough for megapixel frames at video rates:
 * the noise comes from a 64-bit xorshift (four pixels per draw) and the spot is
 * computed only inside its bounding box from two separable 1-D profiles. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"
#include "labmq/status.h"
#include "sim.h"

#define MAX_SIDE 8192
#define MAX_PIXELS ((64u << 20) / 2) /* one frame fits a 64 MiB protocol frame */
#define MIN_FPS 0.1
#define MAX_FPS 1000.0
#define MIN_EXPOSURE_MS 0.01
#define MAX_EXPOSURE_MS 10000.0
/* Spot brightness: this fraction of full scale per ms of exposure. */
#define SPOT_FS_PER_MS 0.1
/* Lissajous periods of the spot's wander, in seconds. */
#define PATH_PERIOD_X 3.1
#define PATH_PERIOD_Y 4.3

typedef struct cam {
    lmq__fault_t fault; /* first: see fault.h */
    size_t w, h;
    int64_t bits;
    double fps, exposure_ms;
    bool acquiring;
    int64_t t0_mono; /* the spot's path starts here */
    float *gx, *gy;  /* [w], [h]: scratch for the spot profiles */
    lmq__sim_rng_t rng;
} cam_t;

static void render(cam_t *c, uint16_t *px, int64_t t_mono)
{
    const unsigned full = (1u << c->bits) - 1u;
    const unsigned dark = full / 40u;
    /* Read noise spans about 1/256 of full scale, at least one count. */
    const uint64_t span = full / 256u ? full / 256u : 1u;
    const size_t n = c->w * c->h;

    size_t i = 0;
    while (i < n) {
        uint64_t r = lmq__sim_rand(&c->rng);
        for (int k = 0; k < 4 && i < n; k++, i++, r >>= 16)
            px[i] = (uint16_t)(dark + (((r & 0xFFFFu) * span) >> 16));
    }

    double t = (double)(t_mono - c->t0_mono) * 1e-9;
    double cx = (double)c->w * (0.5 + 0.35 * sin(6.283185307179586 * t / PATH_PERIOD_X));
    double cy = (double)c->h * (0.5 + 0.35 * sin(6.283185307179586 * t / PATH_PERIOD_Y + 0.7));
    double side = (double)(c->w < c->h ? c->w : c->h);
    double sigma = side / 40.0 > 1.5 ? side / 40.0 : 1.5;
    double peak = SPOT_FS_PER_MS * c->exposure_ms * full;
    double reach = 4.0 * sigma;

    size_t x0 = cx - reach > 0 ? (size_t)(cx - reach) : 0, x1 = (size_t)fmin(cx + reach + 1, (double)c->w);
    size_t y0 = cy - reach > 0 ? (size_t)(cy - reach) : 0, y1 = (size_t)fmin(cy + reach + 1, (double)c->h);
    for (size_t x = x0; x < x1; x++)
        c->gx[x] = (float)exp(-((double)x - cx) * ((double)x - cx) / (2 * sigma * sigma));
    for (size_t y = y0; y < y1; y++)
        c->gy[y] = (float)(peak * exp(-((double)y - cy) * ((double)y - cy) / (2 * sigma * sigma)));
    for (size_t y = y0; y < y1; y++) {
        uint16_t *row = px + y * c->w;
        for (size_t x = x0; x < x1; x++) {
            float v = (float)row[x] + c->gy[y] * c->gx[x];
            row[x] = v >= (float)full ? (uint16_t)full : (uint16_t)(v + 0.5f);
        }
    }
}

/* Fills px with a frame exposed from `t_mono` on; the spot is taken
 * mid-exposure. */
static void expose(cam_t *c, uint16_t *px, int64_t t_mono) { render(c, px, t_mono + (int64_t)(c->exposure_ms * 5e5)); }

static int apply_rate(lmq_dev_t *dev, cam_t *c)
{
    int rc = lmq_dev_stream_rate(dev, 0, c->acquiring ? c->fps : 0.0);
    return rc ? lmq_dev_fail(dev, rc, "cannot change the frame rate") : 0;
}

/* ---- the "frames" stream ---- */

static int poll_frames(lmq_dev_t *dev, void *state, int64_t now_ns)
{
    cam_t *c = state;
    /* Nobody watching: no frame is rendered at all. */
    if (!c->acquiring || lmq__fault_streams_down(c) || !lmq_dev_stream_wanted(dev, 0))
        return 0;
    /* The frame due now was exposed during the last exposure time. */
    int64_t exp_ns = (int64_t)(c->exposure_ms * 1e6);
    uint16_t *px = malloc(c->w * c->h * sizeof *px);
    if (!px)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for a %zux%zu frame", c->w, c->h);
    expose(c, px, now_ns - exp_ns);
    void *p = px;
    int rc = lmq_dev_publish_take(dev, 0, lmq_clock_real_ns() - exp_ns, &p, c->w * c->h * sizeof *px);
    free(p); /* NULL once the daemon took it */
    return rc;
}

/* ---- methods ---- */

static int m_start(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)args;
    (void)result;
    cam_t *c = state;
    c->acquiring = true;
    return apply_rate(dev, c);
}

static int m_stop(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)args;
    (void)result;
    cam_t *c = state;
    c->acquiring = false;
    return apply_rate(dev, c);
}

static int m_snap(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)args;
    cam_t *c = state;
    int64_t t = lmq_clock_mono_ns();
    /* A software trigger: the sensor integrates for the exposure time first. */
    int rc = lmq_dev_sim_sleep(dev, (int64_t)(c->exposure_ms * 1e6));
    if (rc)
        return lmq_dev_fail(dev, rc, "exposure interrupted by shutdown");
    /* Rendered straight into the reply: no second frame-sized copy. */
    size_t shape[2] = {c->h, c->w};
    if (lmq_value_set_array(result, LMQ_U16, 2, shape, NULL) != 0)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for a %zux%zu frame", c->w, c->h);
    expose(c, result->u.a.data, t);
    return 0;
}

/* ---- properties ---- */

static int get_acquiring(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_bool(((cam_t *)state)->acquiring);
    return 0;
}

static int set_acquiring(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    cam_t *c = state;
    if (in->type != LMQ_BOOL)
        return lmq_dev_fail(dev, LMQ_EARG, "acquiring must be true or false");
    c->acquiring = in->u.b;
    return apply_rate(dev, c);
}

static int get_exposure(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((cam_t *)state)->exposure_ms);
    return 0;
}

static int check_timing(lmq_dev_t *dev, double exposure_ms, double fps)
{
    if (!(exposure_ms >= MIN_EXPOSURE_MS) || exposure_ms > MAX_EXPOSURE_MS)
        return lmq_dev_fail(dev, LMQ_ERANGE, "exposure %.3f ms outside %.2f..%.0f ms", exposure_ms, MIN_EXPOSURE_MS,
                            MAX_EXPOSURE_MS);
    if (!(fps >= MIN_FPS) || fps > MAX_FPS)
        return lmq_dev_fail(dev, LMQ_ERANGE, "frame rate %.3f fps outside %.1f..%.0f fps", fps, MIN_FPS, MAX_FPS);
    /* The sensor cannot expose longer than one frame period. */
    if (exposure_ms > 1000.0 / fps * (1.0 + 1e-9))
        return lmq_dev_fail(dev, LMQ_ERANGE, "exposure %.3f ms exceeds the %.3f ms frame period at %.3f fps",
                            exposure_ms, 1000.0 / fps, fps);
    return 0;
}

static int set_exposure(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    cam_t *c = state;
    double ms;
    if (lmq_value_to_double(in, &ms) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "exposure must be a number");
    int rc = check_timing(dev, ms, c->fps);
    if (rc == 0)
        c->exposure_ms = ms;
    return rc;
}

static int get_fps(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((cam_t *)state)->fps);
    return 0;
}

static int set_fps(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    cam_t *c = state;
    double fps;
    if (lmq_value_to_double(in, &fps) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "fps must be a number");
    int rc = check_timing(dev, c->exposure_ms, fps);
    if (rc)
        return rc;
    c->fps = fps;
    return apply_rate(dev, c);
}

static int get_width(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_int((int64_t)((cam_t *)state)->w);
    return 0;
}

static int get_height(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_int((int64_t)((cam_t *)state)->h);
    return 0;
}

static int get_bit_depth(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_int(((cam_t *)state)->bits);
    return 0;
}

/* ---- open / close ---- */

static void cam_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    cam_t *c = state;
    if (!c)
        return;
    free(c->gx);
    free(c->gy);
    free(c);
}

static int cam_open(lmq_dev_t *dev, void **state)
{
    /* A simulated unplug outlasts the close: no open until it is over. */
    int plugged = lmq__fault_plugged(dev);
    if (plugged)
        return plugged;
    cam_t *c = calloc(1, sizeof *c);
    if (!c)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    int64_t w = lmq_dev_opt_int(dev, "width"), h = lmq_dev_opt_int(dev, "height");
    c->bits = lmq_dev_opt_int(dev, "bit_depth");
    c->fps = lmq_dev_opt_float(dev, "fps");
    c->exposure_ms = lmq_dev_opt_float(dev, "exposure_ms");
    c->acquiring = true;
    int rc = 0;
    if (w < 1 || w > MAX_SIDE || h < 1 || h > MAX_SIDE || (uint64_t)w * (uint64_t)h > MAX_PIXELS)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "frame %lldx%lld outside 1..%d per side and %u pixels", (long long)w,
                          (long long)h, MAX_SIDE, MAX_PIXELS);
    else if (c->bits < 8 || c->bits > 16)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "bit_depth %lld outside 8..16", (long long)c->bits);
    else if (check_timing(dev, c->exposure_ms, c->fps) != 0)
        rc = LMQ_ECONFIG; /* keeps check_timing's message */
    if (rc == 0) {
        c->w = (size_t)w;
        c->h = (size_t)h;
        c->gx = malloc(c->w * sizeof *c->gx);
        c->gy = malloc(c->h * sizeof *c->gy);
        if (!c->gx || !c->gy)
            rc = lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    }
    if (rc == 0) {
        size_t shape[2] = {c->h, c->w};
        rc = lmq_dev_stream_shape(dev, 0, 2, shape);
        if (rc)
            rc = lmq_dev_fail(dev, rc, "cannot set up the frames stream");
    }
    if (rc == 0)
        rc = apply_rate(dev, c);
    if (rc) {
        cam_close(dev, c);
        return rc;
    }
    lmq__sim_rng_seed(&c->rng, lmq_dev_name(dev), lmq_dev_opt_int(dev, "seed"));
    c->t0_mono = lmq_clock_mono_ns();
    *state = c;
    return 0;
}

/* ---- tables ---- */

static const lmq_option_t cam_options[] = {
    {.name = "width", .type = LMQ_INT, .def = "1024", .doc = "frame width in pixels"},
    {.name = "height", .type = LMQ_INT, .def = "1024", .doc = "frame height in pixels"},
    {.name = "fps", .type = LMQ_FLOAT, .def = "10", .doc = "frame rate while acquiring"},
    {.name = "exposure_ms", .type = LMQ_FLOAT, .def = "5", .doc = "exposure time in ms"},
    {.name = "bit_depth",
     .type = LMQ_INT,
     .def = "12",
     .doc = "sensor bits per pixel (8..16); full scale is 2^bits - 1"},
    {.name = "seed", .type = LMQ_INT, .def = "0", .doc = "noise seed (combined with the device name)"},
    {.name = NULL},
};

static const lmq_method_t cam_methods[] = {
    {.name = "start", .doc = "starts streaming frames at fps", .ret = LMQ_NONE, .fn = m_start},
    {.name = "stop", .doc = "stops streaming frames", .ret = LMQ_NONE, .fn = m_stop},
    {.name = "snap",
     .doc = "exposes and returns one frame [height, width]",
     .ret = LMQ_ARRAY,
     .ret_unit = "counts",
     .ret_dtype = LMQ_U16,
     .ret_ndim = 2,
     .fn = m_snap},
    {.name = NULL},
};

static const lmq_property_t cam_properties[] = {
    {.name = "acquiring",
     .doc = "frames are streamed",
     .type = LMQ_BOOL,
     .unit = "",
     .get = get_acquiring,
     .set = set_acquiring},
    {.name = "exposure",
     .doc = "exposure time (at most one frame period)",
     .type = LMQ_FLOAT,
     .unit = "ms",
     .limited = true,
     .min = MIN_EXPOSURE_MS,
     .max = MAX_EXPOSURE_MS,
     .get = get_exposure,
     .set = set_exposure},
    {.name = "fps",
     .doc = "frame rate while acquiring",
     .type = LMQ_FLOAT,
     .unit = "Hz",
     .limited = true,
     .min = MIN_FPS,
     .max = MAX_FPS,
     .get = get_fps,
     .set = set_fps},
    {.name = "width", .doc = "frame width", .type = LMQ_INT, .unit = "px", .get = get_width},
    {.name = "height", .doc = "frame height", .type = LMQ_INT, .unit = "px", .get = get_height},
    {.name = "bit_depth", .doc = "sensor bits per pixel", .type = LMQ_INT, .unit = "bit", .get = get_bit_depth},
    LMQ__FAULT_PROPERTY,
    {.name = NULL},
};

static const lmq_stream_t cam_streams[] = {
    {.name = "frames",
     .doc = "frames [height, width] while acquiring",
     .dtype = LMQ_U16,
     .unit = "counts",
     .poll = poll_frames},
    {.name = NULL},
};

const lmq_driver_t lmq__sim_camera = {
    .name = "sim-camera",
    .description = "simulated camera: 16-bit frames of a wandering Gaussian spot",
    .options = cam_options,
    .open = cam_open,
    .close = cam_close,
    .before = lmq__fault_before,
    .check = lmq__fault_check,
    .methods = cam_methods,
    .properties = cam_properties,
    .streams = cam_streams,
};
