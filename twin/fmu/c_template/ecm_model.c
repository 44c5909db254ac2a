/*
 * Physics of the equivalent-circuit cell: table look-ups, the exact zero-order-hold step
 * (co-simulation) and the right-hand side (model exchange). See ecm_model.h.
 *
 * Expressions keep the operation order of twin/models/ecm.py so that results agree to the
 * last bit; build with -ffp-contract=off so the compiler does not fuse them into FMAs.
 */
#include <math.h>

#include "ecm_model.h"
#include "ecm_tables.h"

#define BT_KELVIN 273.15
#define BT_N_PAR (1 + 2 * BT_N_RC) /* R0, R1..Rn, tau1..taun */

typedef struct {
    int index;
    double fraction;
} bt_grid_point;

/* EcmTwin._soc_index: np.clip(x, 0, n - 1.000001), then integer part and fraction. */
static bt_grid_point grid_point(double x, double x_max) {
    bt_grid_point g;
    if (x < 0.0) x = 0.0;
    if (x > x_max) x = x_max;
    g.index = (int)x;
    g.fraction = x - (double)g.index;
    return g;
}

static bt_grid_point soc_point(double soc) {
    return grid_point((soc - BT_SOC0) * BT_INV_DSOC, BT_SOC_X_MAX);
}

static bt_grid_point temperature_point(double temperature_c) {
#if BT_NT > 1
    return grid_point((temperature_c - BT_T0) * BT_INV_DT, BT_T_X_MAX);
#else
    bt_grid_point g = {0, 0.0};
    (void)temperature_c;
    return g;
#endif
}

/* EcmTwin._lookup_at: R0, R1..Rn, tau1..taun, bilinear in SoC and temperature. */
static void lookup(bt_grid_point s, bt_grid_point t, int charging, double out[BT_N_PAR]) {
    const int col = charging * (BT_NT * BT_NSOC) + s.index + t.index * BT_NSOC;
    int k;
    for (k = 0; k < BT_N_PAR; k++) {
        const double c0 = BT_TABLE[k][col];
        const double c1 = BT_TABLE[BT_N_PAR + k][col];
#if BT_NT > 1
        const double c2 = BT_TABLE[2 * BT_N_PAR + k][col];
        const double c3 = BT_TABLE[3 * BT_N_PAR + k][col];
        const double base = c2 * t.fraction + c0;
        const double slope = (c3 * t.fraction + c1) * s.fraction;
        out[k] = base + slope;
#else
        out[k] = c1 * s.fraction + c0;
#endif
    }
}

/* EcmTwin._ocv_at_index: OCV at the reference temperature and dOCV/dT. */
static void ocv_at(bt_grid_point s, double *ocv_ref_v, double *dudt_v_per_k) {
    *ocv_ref_v = BT_OCV_TABLE[1][s.index] * s.fraction + BT_OCV_TABLE[0][s.index];
    *dudt_v_per_k = BT_OCV_TABLE[3][s.index] * s.fraction + BT_OCV_TABLE[2][s.index];
}

/* EcmTwin._direction_tables: charge tables while charging, and while resting after a
 * charge (relaxation after a charge pulse follows the charge time constants). */
static int charging_tables(const bt_state *s, double current_a) {
    return current_a < 0.0 || (current_a == 0.0 && s->last_direction < 0.0);
}

double bt_model_capacity_ah(const bt_params *p) {
    return BT_CAPACITY_NOMINAL_AH * p->soh;
}

void bt_model_init(bt_state *s, double soc, double temperature_c) {
    int k;
    double ocv_ref, dudt;
    s->soc = soc;
    s->temperature_c = temperature_c;
    for (k = 0; k < BT_N_RC; k++) s->v_rc_v[k] = 0.0;
    s->last_direction = 0.0;
    ocv_at(soc_point(soc), &ocv_ref, &dudt);
    s->voltage_v = ocv_ref + dudt * (temperature_c - BT_REFERENCE_TEMPERATURE_C);
}

void bt_model_note_direction(bt_state *s, const bt_params *p, double current_a) {
    /* As EcmTwin: relative to the beginning-of-(second-)life capacity. */
    const double threshold_a =
        BT_REVERSAL_THRESHOLD_C_RATE * (BT_CAPACITY_NOMINAL_AH * fmax(p->soh, 1.0));
    if (fabs(current_a) >= threshold_a) {
        s->last_direction = (double)((current_a > 0.0) - (current_a < 0.0));
    }
}

void bt_model_step(bt_state *s, const bt_params *p, const bt_inputs *u, double dt_s) {
    const double current = u->current_a;
    const int charging = charging_tables(s, current);
    const double stored = charging ? current * p->coulombic_efficiency : current;
    const double soc_end = s->soc - stored * (dt_s / 3600.0) / bt_model_capacity_ah(p);
    const double temp_start = s->temperature_c;
    /* R and C at the end-of-step SoC (known in advance: SoC is linear in charge) and the
     * start-of-step temperature; one grid index serves the R/C tables and the OCV. */
    const bt_grid_point sp = soc_point(soc_end);
    const double rf = p->resistance_factor;
    double par[BT_N_PAR];
    double mean_rc_sum = 0.0, v_rc_sum = 0.0, ocv_ref, dudt, r0_drop, temp_end, v_end;
    int k;

    lookup(sp, temperature_point(temp_start), charging, par);
    r0_drop = par[0] * rf * current;
    for (k = 0; k < BT_N_RC; k++) {
        /* Exact solution for a constant current: v -> R I with time constant tau. */
        const double tau = par[1 + BT_N_RC + k];
        const double r_i = par[1 + k] * (rf * current);
        const double a = exp(-dt_s / tau);
        const double dv = s->v_rc_v[k] - r_i;
        s->v_rc_v[k] = r_i + dv * a;
        mean_rc_sum += r_i + dv * (tau * (1.0 / dt_s)) * (1.0 - a);
    }
    ocv_at(sp, &ocv_ref, &dudt);
#if BT_THERMAL
    {
        /* Bernardi heat with the step-mean RC voltages; exact relaxation towards the
         * steady state for that heat. */
        const double heat_w =
            current * (r0_drop + mean_rc_sum - (temp_start + BT_KELVIN) * dudt);
        const double t_inf = u->ambient_c + heat_w * (1.0 / BT_HEAT_TRANSFER_W_PER_K);
        const double decay = exp(-dt_s * BT_HEAT_TRANSFER_W_PER_K / BT_HEAT_CAPACITY_J_PER_K);
        temp_end = t_inf + (temp_start - t_inf) * decay;
    }
#else
    (void)mean_rc_sum;
    temp_end = u->ambient_c;
#endif
    for (k = 0; k < BT_N_RC; k++) v_rc_sum += s->v_rc_v[k];
    v_end = ocv_ref + dudt * (temp_end - BT_REFERENCE_TEMPERATURE_C);
    v_end -= r0_drop;
    v_end -= v_rc_sum;
    s->soc = soc_end;
    s->temperature_c = temp_end;
    s->voltage_v = v_end;
    bt_model_note_direction(s, p, current);
}

double bt_model_voltage(const bt_state *s, const bt_params *p, const bt_inputs *u) {
    const bt_grid_point sp = soc_point(s->soc);
    double par[BT_N_PAR];
    double ocv_ref, dudt, v, v_rc_sum = 0.0;
    int k;
    lookup(sp, temperature_point(s->temperature_c), charging_tables(s, u->current_a), par);
    ocv_at(sp, &ocv_ref, &dudt);
    for (k = 0; k < BT_N_RC; k++) v_rc_sum += s->v_rc_v[k];
    v = ocv_ref + dudt * (s->temperature_c - BT_REFERENCE_TEMPERATURE_C);
    v -= par[0] * p->resistance_factor * u->current_a;
    v -= v_rc_sum;
    return v;
}

void bt_model_get_states(const bt_state *s, double x[BT_N_STATES]) {
    int k;
    x[0] = s->soc;
    for (k = 0; k < BT_N_RC; k++) x[1 + k] = s->v_rc_v[k];
#if BT_THERMAL
    x[1 + BT_N_RC] = s->temperature_c;
#endif
}

void bt_model_set_states(bt_state *s, const double x[BT_N_STATES]) {
    int k;
    s->soc = x[0];
    for (k = 0; k < BT_N_RC; k++) s->v_rc_v[k] = x[1 + k];
#if BT_THERMAL
    s->temperature_c = x[1 + BT_N_RC];
#endif
}

void bt_model_derivatives(const bt_state *s, const bt_params *p, const bt_inputs *u,
                          double dx[BT_N_STATES]) {
    const double current = u->current_a;
    const int charging = charging_tables(s, current);
    const double stored = charging ? current * p->coulombic_efficiency : current;
    const bt_grid_point sp = soc_point(s->soc);
    const double rf = p->resistance_factor;
    double par[BT_N_PAR];
    double v_rc_sum = 0.0;
    int k;

    lookup(sp, temperature_point(s->temperature_c), charging, par);
    dx[0] = -stored / (3600.0 * bt_model_capacity_ah(p));
    for (k = 0; k < BT_N_RC; k++) {
        const double r = par[1 + k] * rf;
        const double tau = par[1 + BT_N_RC + k];
        dx[1 + k] = (r * current - s->v_rc_v[k]) / tau;
        v_rc_sum += s->v_rc_v[k];
    }
#if BT_THERMAL
    {
        double ocv_ref, dudt;
        const double temp = s->temperature_c;
        ocv_at(sp, &ocv_ref, &dudt);
        const double heat_w =
            current * (par[0] * rf * current + v_rc_sum - (temp + BT_KELVIN) * dudt);
        dx[1 + BT_N_RC] =
            (heat_w - BT_HEAT_TRANSFER_W_PER_K * (temp - u->ambient_c)) / BT_HEAT_CAPACITY_J_PER_K;
    }
#else
    (void)v_rc_sum;
#endif
}
