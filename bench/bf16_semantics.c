/*
 * bench/bf16_semantics.c: what this CPU's vdpbf16ps and vcvtneps2bf16 compute, measured.
 *
 * Runs vdpbf16ps on 16-lane vectors of generated inputs and compares every lane with eight
 * readings of the Intel SDM's pseudocode (the candidates below), in seven families of inputs
 * (around 1; the whole exponent range; products cancelling the accumulator; ties at half an
 * ulp; denormal inputs; products below 2^-126; denormal accumulators); then vcvtneps2bf16
 * against four conversions; then an fp32 FMA under MXCSR.FTZ|DAZ against ftz(fma) (what
 * the emulating levels rely on). Prints the lanes that differ per candidate and family.
 * The result on Zen 4 and the conclusion: docs/design/bf16.md and csrc/bge.h.
 *
 *   gcc -O2 -mavx512f -mavx512vl -mavx512bf16 -mfma bench/bf16_semantics.c \
 *       -o /tmp/bf16_semantics -lquadmath -lm && /tmp/bf16_semantics
 *
 * Needs a CPU with AVX512-BF16 (it faults elsewhere). Not part of the build.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>

static float f_of(uint32_t u){float f;memcpy(&f,&u,4);return f;}
static uint32_t u_of(float f){uint32_t u;memcpy(&u,&f,4);return u;}
static float bf(uint16_t h){return f_of((uint32_t)h<<16);}
static float daz(float f){uint32_t u=u_of(f); if((u&0x7f800000u)==0) return f_of(u&0x80000000u); return f;}
static float ftz(float f){return daz(f);}
static uint64_t s=88172645463325252ull;
static uint64_t rnd(void){s^=s<<13;s^=s>>7;s^=s<<17;return s;}

/* candidates */
static float e_seq_fma(float acc,uint16_t a0,uint16_t a1,uint16_t b0,uint16_t b1,int odd_first,int ftz_mid,int daz_in){
  float x0=bf(a0),x1=bf(a1),y0=bf(b0),y1=bf(b1);
  if(daz_in){x0=daz(x0);x1=daz(x1);y0=daz(y0);y1=daz(y1);acc=daz(acc);}
  if(odd_first){acc=fmaf(x1,y1,acc); if(ftz_mid)acc=ftz(acc); acc=fmaf(x0,y0,acc);}
  else {acc=fmaf(x0,y0,acc); if(ftz_mid)acc=ftz(acc); acc=fmaf(x1,y1,acc);}
  return ftz(acc);
}
static float e_seq_mul(float acc,uint16_t a0,uint16_t a1,uint16_t b0,uint16_t b1){
  /* product rounded to fp32 (with ftz), then add, ftz */
  float x0=daz(bf(a0)),x1=daz(bf(a1)),y0=daz(bf(b0)),y1=daz(bf(b1)); acc=daz(acc);
  volatile float p1=x1*y1; float q1=ftz(p1); acc=ftz(acc+q1);
  volatile float p0=x0*y0; float q0=ftz(p0); acc=ftz(acc+q0);
  return acc;
}
static float e_sum3(float acc,uint16_t a0,uint16_t a1,uint16_t b0,uint16_t b1){
  float x0=daz(bf(a0)),x1=daz(bf(a1)),y0=daz(bf(b0)),y1=daz(bf(b1)); acc=daz(acc);
  __float128 t=(__float128)x1*y1+(__float128)x0*y0+(__float128)acc;
  return ftz((float)t);
}
static float e_pairsum(float acc,uint16_t a0,uint16_t a1,uint16_t b0,uint16_t b1){
  float x0=daz(bf(a0)),x1=daz(bf(a1)),y0=daz(bf(b0)),y1=daz(bf(b1)); acc=daz(acc);
  float p=ftz((float)((double)x1*y1+(double)x0*y0));
  return ftz(acc+p);
}
#define NC 8
static const char*names[NC]={"seq odd-first fma ftz-mid daz","seq even-first fma ftz-mid daz","seq odd-first fma no-ftz-mid daz","seq odd-first fma ftz-mid no-daz","seq mul-round-add","3-term single round","pair-sum then add","seq odd-first fma NO ftz at all"};
static float cand(int c,float acc,uint16_t a0,uint16_t a1,uint16_t b0,uint16_t b1){
  switch(c){case 0:return e_seq_fma(acc,a0,a1,b0,b1,1,1,1);case 1:return e_seq_fma(acc,a0,a1,b0,b1,0,1,1);
  case 2:return e_seq_fma(acc,a0,a1,b0,b1,1,0,1);case 3:return e_seq_fma(acc,a0,a1,b0,b1,1,1,0);
  case 4:return e_seq_mul(acc,a0,a1,b0,b1);case 5:return e_sum3(acc,a0,a1,b0,b1);case 6:return e_pairsum(acc,a0,a1,b0,b1);
  case 7:{float x0=bf(a0),x1=bf(a1),y0=bf(b0),y1=bf(b1);acc=fmaf(x1,y1,acc);return fmaf(x0,y0,acc);} }
  return 0;
}
static int same(float a,float b){uint32_t x=u_of(a),y=u_of(b); if(isnan(a)&&isnan(b))return 1; return x==y;}

/* generators */
static uint16_t g_normal(void){ /* random bf16 around 1 */ uint16_t e=127-8+rnd()%16; return (uint16_t)(((rnd()&1)<<15)|(e<<7)|(rnd()&0x7f)); }
static uint16_t g_wide(void){ uint16_t e=1+rnd()%253; return (uint16_t)(((rnd()&1)<<15)|(e<<7)|(rnd()&0x7f)); }
static uint16_t g_denorm(void){ int r=rnd()%4; if(r==0) return (uint16_t)(((rnd()&1)<<15)|(rnd()&0x7f)); if(r==1){uint16_t e=1+rnd()%20;return (uint16_t)(((rnd()&1)<<15)|(e<<7)|(rnd()&0x7f));} return g_normal(); }
static uint16_t g_small(void){ uint16_t e=1+rnd()%70; return (uint16_t)(((rnd()&1)<<15)|(e<<7)|(rnd()&0x7f)); }

/* candidate conversions */
static uint16_t cv_rne(float f, int daz_in, int ftz_out){
  uint32_t u=u_of(f);
  if((u&0x7fffffffu)>0x7f800000u) return (uint16_t)((u>>16)|0x40);
  if(daz_in && (u&0x7f800000u)==0) u&=0x80000000u;
  u += 0x7fffu + ((u>>16)&1);
  uint16_t h=(uint16_t)(u>>16);
  if(ftz_out && (h&0x7f80)==0) h&=0x8000;
  return h;
}

static void conversions_and_ftz(void){
  long mism[4]={0},n=0;
  for(int it=0;it<2000000;it++){
    float x[16]; for(int j=0;j<16;j++){ uint32_t u=(uint32_t)rnd(); int r=rnd()%4; if(r==0) u&=0x80ffffffu; else if(r==1) u=(u&0x807fffffu)|((uint32_t)(rnd()%3)<<23); else if(r==2) u=(u&0x807fffffu)|0x7f000000u|((rnd()&1)<<23); x[j]=f_of(u);} 
    __m256bh h=_mm512_cvtneps_pbh(_mm512_loadu_ps(x)); uint16_t o[16]; memcpy(o,&h,32);
    for(int j=0;j<16;j++){ n++; int c=0; for(int dz=0;dz<2;dz++)for(int fz=0;fz<2;fz++){ if(o[j]!=cv_rne(x[j],dz,fz)){ mism[c]++; if(c==3 && mism[c]<4) printf("x=%08x hw=%04x mine=%04x\n",u_of(x[j]),o[j],cv_rne(x[j],dz,fz));} c++; } }
  }
  printf("cvtneps2bf16 n=%ld  [nodaz,noftz]%ld [nodaz,ftz]%ld [daz,noftz]%ld [daz,ftz]%ld\n",n,mism[0],mism[1],mism[2],mism[3]);
  /* NaN test */
  float nn[16]; for(int j=0;j<16;j++) nn[j]=f_of((0x7f800001u+(uint32_t)(rnd()%0x7fffff)) | (uint32_t)((rnd()&1)<<31));
  __m256bh h=_mm512_cvtneps_pbh(_mm512_loadu_ps(nn)); uint16_t o[16]; memcpy(o,&h,32);
  for(int j=0;j<4;j++) printf("nan %08x -> %04x (mine %04x)\n",u_of(nn[j]),o[j],cv_rne(nn[j],1,1));
  /* FMA with MXCSR FTZ|DAZ vs explicit */
  unsigned int old=_mm_getcsr(); long fm=0,fn=0;
  for(int it=0;it<2000000;it++){
    float a[16],b[16],c[16];
    for(int j=0;j<16;j++){ a[j]=f_of(((uint32_t)(1+rnd()%80)<<23)|(rnd()&0x7f0000)|((rnd()&1)<<31)); b[j]=f_of(((uint32_t)(1+rnd()%80)<<23)|(rnd()&0x7f0000)|((rnd()&1)<<31));
      int r=rnd()%3; c[j]= r==0?0.0f: r==1? f_of(((uint32_t)(1+rnd()%40)<<23)|(rnd()&0x7fffff)|((rnd()&1)<<31)) : -a[j]*b[j]*(1+ldexpf(1,-(int)(rnd()%30)));}
    _mm_setcsr(old|0x8040);
    __m512 r=_mm512_fmadd_ps(_mm512_loadu_ps(a),_mm512_loadu_ps(b),_mm512_loadu_ps(c));
    float out[16]; _mm512_storeu_ps(out,r);
    _mm_setcsr(old);
    for(int j=0;j<16;j++){ fn++; float e=daz(fmaf(a[j],b[j],daz(c[j]))); if(u_of(e)!=u_of(out[j])){ fm++; if(fm<4) printf("fma a=%a b=%a c=%a hw=%a mine=%a\n",a[j],b[j],c[j],out[j],e);} }
  }
  printf("fma under FTZ|DAZ n=%ld mismatches %ld\n",fn,fm);
}

int main(){
  const char*cats[]={"normal","wide","cancel","ties","denormal-in","tiny-products","acc-denormal"};
  for(int cat=0;cat<7;cat++){
    long mism[NC]={0}; long n=0;
    for(int it=0;it<200000;it++){
      float acc[16]; uint16_t a[32],b[32];
      for(int j=0;j<16;j++){
        uint16_t a0,a1,b0,b1; float ac;
        switch(cat){
        case 0: a0=g_normal();a1=g_normal();b0=g_normal();b1=g_normal(); ac=(float)((int)(rnd()%2000)-1000)/37.0f; break;
        case 1: a0=g_wide();a1=g_wide();b0=g_wide();b1=g_wide(); ac=f_of((uint32_t)rnd()); if(isnan(ac)||isinf(ac)) ac=1.0f; break;
        case 2: a0=g_normal();a1=g_normal();b0=g_normal();b1=g_normal();
                { float p1=bf(a1)*bf(b1); int sh=rnd()%30; ac=-p1*(1.0f+ldexpf((float)(rnd()%64)-32.0f,-8-sh)); if(rnd()%2) ac=-p1; 
                  if(rnd()%2){ /* make even product cancel acc+p1 */ float t=ac+p1; uint32_t u=u_of(-t)>>16; a0=(uint16_t)u; b0=0x3f80; } } break;
        case 3: { /* ties: acc = 1+k ulp, products at half ulp */ ac=f_of(0x3f800000u+(rnd()%8)); int sh=24+(rnd()%3); a1=(uint16_t)(u_of(ldexpf(1.0f,-sh))>>16); b1=0x3f80|((rnd()&1)<<15);
                  a0=(uint16_t)(u_of(ldexpf(1.0f,-(24+rnd()%3)))>>16); b0=0x3f80|((rnd()&1)<<15); if(rnd()%2){float sc=ldexpf(1.0f,(int)(rnd()%40)-20); ac*=sc; a1=(uint16_t)(u_of(bf(a1)*sc)>>16); a0=(uint16_t)(u_of(bf(a0)*sc)>>16);} } break;
        case 4: a0=g_denorm();a1=g_denorm();b0=g_denorm();b1=g_denorm(); ac=(rnd()%2)?0.0f:f_of((uint32_t)(rnd()&0x807fffffu)|(rnd()%3==0?0x00800000u*(1+rnd()%10):0)); break;
        case 5: a0=g_small();a1=g_small();b0=g_small();b1=g_small(); { int r=rnd()%3; ac= r==0?0.0f: r==1? f_of(((uint32_t)(1+rnd()%40)<<23)|(rnd()&0x7fffff)|((rnd()&1)<<31)) : -(bf(a1)*bf(b1)); } break;
        default: a0=g_small();a1=g_small();b0=g_small();b1=g_small(); ac=f_of((uint32_t)(rnd()&0x807fffffu)); break;
        }
        acc[j]=ac; a[2*j]=a0;a[2*j+1]=a1;b[2*j]=b0;b[2*j+1]=b1;
      }
      __m512 va=_mm512_loadu_ps(acc); __m512bh xa,xb; memcpy(&xa,a,64); memcpy(&xb,b,64);
      __m512 r=_mm512_dpbf16_ps(va,xa,xb); float out[16]; _mm512_storeu_ps(out,r);
      for(int j=0;j<16;j++){ n++; for(int c=0;c<NC;c++) if(!same(out[j],cand(c,acc[j],a[2*j],a[2*j+1],b[2*j],b[2*j+1]))){ mism[c]++;
          if(c==0 && mism[c]<=3) printf("  [%s] acc=%a a1*b1=%a*%a a0*b0=%a*%a hw=%a cand=%a\n",cats[cat],acc[j],bf(a[2*j+1]),bf(b[2*j+1]),bf(a[2*j]),bf(b[2*j]),out[j],cand(0,acc[j],a[2*j],a[2*j+1],b[2*j],b[2*j+1])); } }
    }
    printf("%-14s n=%ld:",cats[cat],n); for(int c=0;c<NC;c++) printf(" [%d]%ld",c,mism[c]); printf("\n");
  }
  for(int c=0;c<NC;c++) printf("%d: %s\n",c,names[c]);
  conversions_and_ftz();
  return 0;
}
